"""The histology input pipeline on real tensors: patches, symmetries, stain and colour jitter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lymphaug.classifier.transforms import (
    PatchAugment,
    augment_patches,
    colour_jitter,
    dihedral,
    grid_patches,
    hed_jitter,
    hed_to_rgb,
    random_patches,
    rescale,
    rgb_to_hed,
    symmetries,
)
from lymphaug.common.errors import DataError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _he_like(n: int = 4, h: int = 40, w: int = 56) -> torch.Tensor:
    """Pink background with purple blobs: H&E-like uint8 NCHW."""
    rng = np.random.default_rng(0)
    img = np.empty((n, h, w, 3), np.float64)
    img[:] = (235, 180, 210)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        for _ in range(6):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            img[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 30] = (90, 50, 150)
    img += rng.normal(0, 4, img.shape)
    return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)).permute(0, 3, 1, 2)


def test_dihedral_moves_pixels_as_the_eight_symmetries():
    x = torch.arange(3 * 4 * 4, dtype=torch.uint8).reshape(1, 3, 4, 4).repeat(8, 1, 1, 1)
    out = dihedral(x, torch.arange(8))
    top_left = x[0, 0, 0, 0]
    # a quarter turn counter-clockwise takes the top-left pixel to the bottom-left
    assert out[1, 0, 3, 0] == top_left
    assert out[2, 0, 3, 3] == top_left  # half turn: bottom-right
    assert out[3, 0, 0, 3] == top_left  # three quarters: top-right
    assert out[4, 0, 0, 3] == top_left  # no turn, then mirrored: top-right
    assert torch.equal(out[0], x[0])
    # all eight are distinct arrangements of the same pixels
    flat = {tuple(o[0].flatten().tolist()) for o in out}
    assert len(flat) == 8
    assert all(sorted(o.flatten().tolist()) == sorted(x[0].flatten().tolist()) for o in out)


def test_symmetries_match_dihedral():
    image = torch.arange(3 * 4 * 6, dtype=torch.uint8).reshape(3, 4, 6)
    square = image[:, :, :4]
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            symmetries(square), dihedral(square.repeat(8, 1, 1, 1), torch.arange(8)), strict=True
        )
    )
    assert [tuple(s.shape) for s in symmetries(image)] == [(3, 4, 6), (3, 6, 4)] * 4


def test_hed_round_trip_and_stain_channels():
    rgb = _he_like().float() / 255
    assert torch.allclose(hed_to_rgb(rgb_to_hed(rgb, clip=False)), rgb, atol=1e-5)
    hed = rgb_to_hed(rgb)
    # the purple nuclei carry more haematoxylin than the pink background
    nucleus = (rgb[:, 0] < 0.5) & (rgb[:, 2] > 0.45)
    assert hed[:, 0][nucleus].mean() > 2 * hed[:, 0][~nucleus].mean()


def test_stain_jitter_moves_h_and_e_and_stays_in_range():
    rgb = _he_like().float() / 255
    out = hed_jitter(rgb, 0.2, _gen(1))
    assert out.shape == rgb.shape and out.dtype == rgb.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    before, after = rgb_to_hed(rgb), rgb_to_hed(out)
    for channel in (0, 1):  # haematoxylin, eosin: each image's density moves by > 1 %
        change = (after[:, channel] - before[:, channel]).abs().mean(dim=(1, 2))
        relative = change / before[:, channel].mean(dim=(1, 2))
        assert (relative > 0.01).all(), f"stain {channel} did not move in every image"
    # DAB (absent from H&E) is not jittered
    assert torch.allclose(after[:, 2], before[:, 2], atol=1e-4)
    assert torch.equal(out, hed_jitter(rgb, 0.2, _gen(1)))  # seeded
    assert torch.allclose(hed_jitter(rgb, 0.0, _gen(1)), rgb, atol=1e-5)  # sigma 0: unchanged
    assert not torch.equal(out, hed_jitter(rgb, 0.2, _gen(2)))


def test_stain_jitter_refuses_a_non_rgb_tensor():
    with pytest.raises(DataError, match=r"train\.hed_jitter.*RGB"):
        hed_jitter(torch.rand(2, 1, 8, 8), 0.1, _gen())


def test_colour_jitter_changes_and_clips():
    rgb = _he_like().float() / 255
    out = colour_jitter(rgb, brightness=0.3, contrast=0.3, saturation=0.3, gen=_gen())
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out - rgb).abs().mean() > 0.01
    same = colour_jitter(rgb, brightness=0.0, contrast=0.0, saturation=0.0, gen=_gen())
    assert torch.equal(same, rgb)


def test_random_patches_come_from_the_image_and_are_seeded():
    images = list(_he_like(3, 40, 56))
    a = random_patches(images, 16, _gen(3))
    assert a.shape == (3, 3, 16, 16)
    assert torch.equal(a, random_patches(images, 16, _gen(3)))
    for patch, image in zip(a, images, strict=True):
        windows = image.unfold(1, 16, 1).unfold(2, 16, 1)  # C, H', W', 16, 16
        assert (windows == patch[:, None, None]).all(dim=(0, 3, 4)).any()
    with pytest.raises(DataError, match="patch_size=64"):
        random_patches(images, 64, _gen())


def test_augment_patches_is_seeded_and_keeps_uint8():
    batch = _he_like(6, 24, 24)
    aug = PatchAugment(dihedral=True, hed_sigma=0.05, brightness=0.1, contrast=0.1, saturation=0.1)
    a = augment_patches(batch, aug, _gen(5))
    assert a.dtype == torch.uint8 and a.shape == batch.shape
    assert torch.equal(a, augment_patches(batch, aug, _gen(5)))
    assert not torch.equal(a, batch)
    plain = augment_patches(batch, PatchAugment(dihedral=False), _gen(5))
    assert torch.equal(plain, batch)


def test_grid_covers_the_image_and_rescale_halves():
    image = _he_like(1, 156, 208)[0]
    patches = grid_patches(image, 64)
    assert patches.shape == (3 * 4, 3, 64, 64)  # rows at 0, 64, 92; columns at 0, 64, 128, 144
    assert torch.equal(patches[0], image[:, :64, :64])
    assert torch.equal(patches[-1], image[:, -64:, -64:])
    assert rescale(_he_like(1, 312, 417)[0], 0.5).shape == (3, 156, 208)
