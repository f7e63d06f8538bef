"""Sampling helpers: schedulers by name, picture grids, the real-vs-synthetic sheet."""

from __future__ import annotations

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
