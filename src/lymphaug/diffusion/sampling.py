"""Sampling helpers: schedulers by name, the canvas a synthetic image is sampled on (aspect
ratio kept), picture grids, the real-vs-synthetic sheet."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from lymphaug.common.images import to_uint8
from lymphaug.diffusion.seeding import step_generator

SCHEDULERS = ("dpmsolver++", "ddpm", "pndm", "euler")


def make_scheduler(name: str, config):
    """A sampling scheduler built from the model's own scheduler config, so its noise schedule
    matches the one the model was trained with (DPM-Solver++ by default)."""
    from diffusers import (
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    if name == "pndm":
        return PNDMScheduler.from_config(config, skip_prk_steps=True)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}; expected one of {SCHEDULERS}")


def pixel_multiple(pipe) -> int:
    """Pixels per step of the sizes the UNet divides evenly: the VAE's factor times 2 per
    UNet down-sampling (Stable Diffusion v1: 8 x 8 = 64 px, latents in multiples of 8)."""
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1)


@dataclass(frozen=True)
class Canvas:
    """Where a synthetic image is sampled and how it becomes the published one, unstretched.

    ``sample``: the (width, height) the pipeline samples at; ``crop``: the centre (width,
    height) kept, the data set's aspect ratio (None: all of it); ``source_scale``: img2img
    rescales its training image by at least this (the from-scratch model's pixel scale).
    """

    sample: tuple[int, int]
    crop: tuple[int, int] | None = None
    source_scale: float = 0.0

    def finish(self, array: np.ndarray, width: int, height: int) -> np.ndarray:
        """A sampled HxWx3 image as published: the centre crop, uniformly resized."""
        if self.crop is not None:
            array = centre_crop(array, *self.crop)
        return resize(array, width, height)

    def source(self, array: np.ndarray) -> Image.Image:
        """img2img's starting image: the training image rescaled (never squashed) to cover
        the canvas, at least by ``source_scale``, and its centre cut to the canvas."""
        width, height = self.sample
        scale = max(self.source_scale, width / array.shape[1], height / array.shape[0])
        size = (
            max(width, round(array.shape[1] * scale)),
            max(height, round(array.shape[0] * scale)),
        )
        image = Image.fromarray(array)
        if size != image.size:
            image = image.resize(size, Image.BICUBIC)
        return Image.fromarray(centre_crop(np.asarray(image), width, height))


def aspect_canvas(width: int, height: int, *, resolution: int, multiple: int) -> Canvas:
    """Sample a ``width`` x ``height`` data set's images at the scale of the training crops
    (shorter side ``resolution``), each side rounded up to a ``multiple``; keep the centre at
    the data set's aspect ratio. 417 x 312 at 512 px, multiples of 64: 704 x 512, 684 x 512 kept.
    """
    short = min(width, height)
    sample = tuple(
        -(-side * resolution // (short * multiple)) * multiple for side in (width, height)
    )
    sample_w, sample_h = sample
    if sample_w * height > width * sample_h:  # wider than the data set: keep the full height
        crop = ((2 * sample_h * width + height) // (2 * height), sample_h)
    else:
        crop = (sample_w, (2 * sample_w * height + width) // (2 * width))
    return Canvas(sample=(sample_w, sample_h), crop=crop)


def centre_crop(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """The centre ``width`` x ``height`` of an HxWx3 image (all of a side that is shorter)."""
    top, left = max(0, (array.shape[0] - height) // 2), max(0, (array.shape[1] - width) // 2)
    return array[top : top + height, left : left + width]


def resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos-resize an HxWx3 uint8 image; one already that size is returned untouched."""
    if array.shape[1] == width and array.shape[0] == height:
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), Image.LANCZOS))


def grid(rows: list[list[np.ndarray]], pad: int = 2) -> Image.Image:
    """Tile rows of equally sized HxWx3 uint8 images, white padding."""
    height, width = rows[0][0].shape[:2]
    n_cols = max(len(row) for row in rows)
    sheet = Image.new(
        "RGB", (n_cols * (width + pad) + pad, len(rows) * (height + pad) + pad), "white"
    )
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            sheet.paste(Image.fromarray(img), (pad + c * (width + pad), pad + r * (height + pad)))
    return sheet


def real_vs_synthetic_sheet(
    real: dict[str, list[np.ndarray]], synthetic: dict[str, list[np.ndarray]], thumb: int = 96
) -> Image.Image:
    """One row per class: real training images on the left, synthetic ones on the right."""
    label_w, gap, pad, head = 70, 12, 2, 16
    n_real = max((len(v) for v in real.values()), default=0)
    n_syn = max((len(v) for v in synthetic.values()), default=0)
    classes = list(synthetic)

    def thumbed(array: np.ndarray) -> Image.Image:
        img = Image.fromarray(array)
        scale = thumb / max(img.size)
        return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))

    width = label_w + (n_real + n_syn) * (thumb + pad) + gap
    sheet = Image.new("RGB", (width, head + len(classes) * (thumb + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w, 2), "real (training)", fill="black")
    draw.text((label_w + n_real * (thumb + pad) + gap, 2), "synthetic", fill="black")
    for row, cls in enumerate(classes):
        y = head + row * (thumb + pad)
        draw.text((4, y + thumb // 2 - 5), cls, fill="black")
        for col, image in enumerate(real.get(cls, [])[:n_real]):
            sheet.paste(thumbed(image), (label_w + col * (thumb + pad), y))
        x0 = label_w + n_real * (thumb + pad) + gap
        for col, image in enumerate(synthetic[cls][:n_syn]):
            sheet.paste(thumbed(image), (x0 + col * (thumb + pad), y))
    return sheet


def validation_grid(
    pipe, prompts: list[str], seed: int, *, resolution: int, steps: int, per_class: int = 2
) -> Image.Image:
    """``per_class`` samples per prompt (rows: classes), DPM-Solver++, ``steps`` steps.

    At the training ``resolution`` (finetune.resolution), which is what the model learnt and
    what a grid can judge: Stable Diffusion's own 512 px would cost ~28 minutes per grid on a
    CPU. The seeds are the same at every call, so grids from successive steps show what
    training changed rather than new noise.
    """
    from diffusers import DPMSolverMultistepScheduler

    original = pipe.scheduler
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(original.config)
    rows = []
    try:
        for class_index, prompt in enumerate(prompts):
            # a fixed pseudo-step (10**6): every validation draws the same noise
            generators = [step_generator(seed, 10**6, class_index, i) for i in range(per_class)]
            out = pipe(
                [prompt] * per_class,
                num_inference_steps=steps,
                guidance_scale=4.0,
                generator=generators,
                output_type="np",
                height=resolution,
                width=resolution,
            ).images
            rows.append([to_uint8(x * 255.0) for x in out])
    finally:
        pipe.scheduler = original
    return grid(rows)
