"""The canvas synthetic images are sampled on: the data set's aspect ratio, never stretched."""

from __future__ import annotations

import numpy as np
import pytest

from lymphaug.diffusion.sampling import Canvas, aspect_canvas, pixel_multiple
from lymphaug.diffusion.tiny import build_tiny_pipeline


def disc(width: int, height: int, radius: float) -> np.ndarray:
    """A white image with a black disc at its centre."""
    yy, xx = np.mgrid[0:height, 0:width]
    inside = (yy - (height - 1) / 2) ** 2 + (xx - (width - 1) / 2) ** 2 < radius**2
    image = np.full((height, width, 3), 255, np.uint8)
    image[inside] = 0
    return image


def extent(image: np.ndarray) -> tuple[int, int]:
    """(width, height) of the dark pixels' bounding box."""
    rows, cols = np.nonzero(image[..., 0] < 128)
    return cols.max() - cols.min() + 1, rows.max() - rows.min() + 1


@pytest.mark.parametrize(
    ("size", "resolution", "multiple", "sample", "crop"),
    [
        ((417, 312), 512, 64, (704, 512), (684, 512)),  # Stable Diffusion on the lymphoma images
        ((417, 312), 64, 64, (128, 64), (86, 64)),
        ((312, 417), 512, 64, (512, 704), (512, 684)),  # portrait
        ((300, 300), 512, 64, (512, 512), (512, 512)),
        ((48, 36), 16, 4, (24, 16), (21, 16)),  # the tests' tiny model
    ],
)
def test_canvas_keeps_the_aspect_ratio_in_multiples(size, resolution, multiple, sample, crop):
    canvas = aspect_canvas(*size, resolution=resolution, multiple=multiple)
    assert canvas.sample == sample and canvas.crop == crop
    assert all(side % multiple == 0 for side in canvas.sample)
    assert min(canvas.sample) == resolution  # the training crops' scale
    width, height = size
    assert abs(crop[0] * height / width - crop[1]) <= 0.5  # the data set's ratio to a pixel


def test_the_unet_sizes_step_in_latent_multiples():
    assert pixel_multiple(build_tiny_pipeline(0)) == 2 * 2  # VAE x2, one UNet down-sampling


def test_a_round_sample_is_round_when_published():
    canvas = aspect_canvas(417, 312, resolution=512, multiple=64)
    published = canvas.finish(disc(704, 512, radius=100), 417, 312)
    assert published.shape == (312, 417, 3)
    width, height = extent(published)
    assert abs(width - height) <= 1, (width, height)  # the whole sample resized: 119 x 122


@pytest.mark.parametrize(
    "canvas",
    [aspect_canvas(417, 312, resolution=64, multiple=64), Canvas((64, 64), source_scale=0.5)],
    ids=["aspect", "scratch"],
)
def test_img2img_starts_from_an_unsquashed_crop(canvas):
    start = np.asarray(canvas.source(disc(417, 312, radius=40)))
    assert start.shape == (canvas.sample[1], canvas.sample[0], 3)
    width, height = extent(start)
    assert abs(width - height) <= 1, (width, height)
    if canvas.source_scale:  # the from-scratch model's pixel scale: the disc 80 -> 40 px
        assert abs(width - 40) <= 1


def test_training_crops_are_square_cuts_of_an_unsquashed_image():
    """Fine-tuning's side of the same rule: shorter side resized to the resolution, square
    crops cut from it (random ones during training)."""
    import torch

    from lymphaug.diffusion.training import Sampler, resize_shorter

    image = resize_shorter(disc(417, 312, radius=100), 64)
    assert tuple(image.shape) == (3, 64, 86)
    sampler = Sampler([image], resolution=64, batch_size=1, seed=0, random_flip=False)
    pixels, _ = sampler.batch(0, torch.Generator().manual_seed(0))
    assert tuple(pixels.shape) == (1, 3, 64, 64)
    width, height = extent(np.asarray(image.permute(1, 2, 0)))
    assert abs(width - height) <= 1
