"""Tensor transforms of the classifier's input: the study's crops and the histology recipe.

Every random draw comes from the ``torch.Generator`` the caller passes (the training
loop's, saved in each checkpoint), so a resumed run draws exactly the patches, rotations
and colour changes of an uninterrupted one, and two runs with one seed are identical.
Images are uint8 CHW tensors until :func:`normalize`.

Two input pipelines:

- the study's (``train.patch_size: null``): RandomResizedCrop of the whole image to
  ``input_size`` (scale 0.8-1.0) and flips; evaluation resizes to 256/227 of it and
  centre-crops (:func:`random_crops`, :func:`eval_tensor`). Squashing a 417 x 312 image
  into 96 px erases the nuclei that tell the classes apart;
- patches (``train.patch_size``): random square patches of the (rescaled) image at full
  resolution (:func:`random_patches`) with the eight dihedral symmetries, HED stain
  jitter and brightness/contrast/saturation jitter (:func:`augment_patches`); evaluation
  on the whole image or on a grid of patches (:func:`grid_patches`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as F

from lymphaug.common.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Colour deconvolution for haematoxylin, eosin and DAB (Ruifrok & Johnston 2001), as
# scikit-image's rgb2hed/hed2rgb: optical density = -log(rgb) projected on the stain vectors.
RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
RGB_FROM_HED = RGB_FROM_HED / RGB_FROM_HED.norm(dim=1, keepdim=True)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_FLOOR = math.log(1e-6)  # skimage's log_adjust: optical density is relative to this


def normalize(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float, ImageNet-normalised, channels-last (faster convolutions on CPU)."""
    x = batch_u8.float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def rescale(image: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize a uint8 CHW image by ``scale`` (antialiased); 1.0 returns it unchanged."""
    if scale == 1.0:
        return image
    h, w = image.shape[-2:]
    size = [max(1, round(h * scale)), max(1, round(w * scale))]
    return F.resize(image, size, antialias=True)


# --- the study's pipeline ---------------------------------------------------


def eval_tensor(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """Resize the short side to size*256/227 and center-crop ``size`` (the study's 256/227)."""
    short = round(size * 256 / 227)
    out = [F.center_crop(F.resize(im, [short], antialias=True), [size, size]) for im in images]
    return torch.stack(out)


def _crop_params(h: int, w: int, gen: torch.Generator, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3)):
    """RandomResizedCrop's box sampling, drawn from ``gen`` instead of the global RNG."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=gen).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(u[2] * (h - ch + 1))
            left = int(u[3] * (w - cw + 1))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_crops(
    images: list[torch.Tensor], size: int, gen: torch.Generator, vflip: bool = True
) -> torch.Tensor:
    """Per-image RandomResizedCrop(size, scale 0.8-1.0) + flips, on uint8 tensors."""
    out = []
    flips = torch.rand(len(images), 2, generator=gen) < 0.5
    for im, (h_flip, v_flip) in zip(images, flips.tolist(), strict=True):
        top, left, ch, cw = _crop_params(im.shape[-2], im.shape[-1], gen)
        x = F.resized_crop(im, top, left, ch, cw, [size, size], antialias=True)
        if h_flip:
            x = x.flip(-1)
        if vflip and v_flip:
            x = x.flip(-2)
        out.append(x)
    return torch.stack(out)


# --- the histology pipeline -------------------------------------------------


def random_patches(images: list[torch.Tensor], size: int, gen: torch.Generator) -> torch.Tensor:
    """One random ``size`` x ``size`` patch of each image, at full resolution (uint8)."""
    out = []
    for im in images:
        h, w = im.shape[-2:]
        if size > h or size > w:
            raise DataError(f"train.patch_size={size} exceeds an image of {w} x {h} px")
        top, left = torch.rand(2, generator=gen) * torch.tensor([h - size + 1, w - size + 1])
        out.append(im[:, int(top) : int(top) + size, int(left) : int(left) + size])
    return torch.stack(out)


def dihedral(batch: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Apply one of the 8 symmetries of the square to each image of an NCHW batch.

    ``which[i]`` in 0..7: ``which % 4`` quarter turns counter-clockwise, then a
    horizontal flip when ``which >= 4``. Histology has no up or left, so all eight are
    the same tissue.
    """
    out = torch.empty_like(batch)
    for i, k in enumerate(which.tolist()):
        x = torch.rot90(batch[i], k % 4, dims=(-2, -1))
        out[i] = x.flip(-1) if k >= 4 else x
    return out


def symmetries(image: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/flips of one CHW image, in :func:`dihedral`'s order (0..7)."""
    turns = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    return turns + [turn.flip(-1) for turn in turns]


def rgb_to_hed(rgb: torch.Tensor, *, clip: bool = True) -> torch.Tensor:
    """Float RGB in [0, 1] (NCHW) -> haematoxylin, eosin, DAB densities (skimage's rgb2hed).

    ``clip`` drops negative densities as skimage does; the jitter keeps them
    (``clip=False``) so that an unperturbed image recomposes exactly.
    """
    _check_rgb(rgb)
    od = torch.log(rgb.clamp_min(1e-6)) / _LOG_FLOOR
    hed = torch.einsum("nchw,cd->ndhw", od, HED_FROM_RGB.to(rgb.dtype))
    return hed.clamp_min(0.0) if clip else hed


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_hed` (skimage's hed2rgb), clipped to [0, 1]."""
    log_rgb = torch.einsum("nchw,cd->ndhw", hed * _LOG_FLOOR, RGB_FROM_HED.to(hed.dtype))
    return torch.exp(log_rgb).clamp(0.0, 1.0)


def _check_rgb(batch: torch.Tensor) -> None:
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise DataError(
            "train.hed_jitter: stain jitter needs RGB images (N, 3, H, W), "
            f"got {tuple(batch.shape)}"
        )


def hed_jitter(rgb: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Perturb each image's haematoxylin and eosin densities, then recompose RGB.

    Per image and stain: ``s * U(1-sigma, 1+sigma) + U(-sigma, sigma) * mean(s)``, the
    scheme of Tellez et al. (2018) with the shift relative to the image's own stain
    density (skimage's density units are small, so an absolute shift of the same sigma
    turns tissue green). DAB, absent from H&E, is left alone. Float [0, 1] in and out.
    """
    _check_rgb(rgb)
    n = rgb.shape[0]
    alpha = 1.0 + (torch.rand(n, 3, 1, 1, generator=gen, dtype=torch.float64) * 2 - 1) * sigma
    beta = (torch.rand(n, 3, 1, 1, generator=gen, dtype=torch.float64) * 2 - 1) * sigma
    alpha[:, 2], beta[:, 2] = 1.0, 0.0
    hed = rgb_to_hed(rgb.double(), clip=False)
    mean_density = hed.clamp_min(0.0).mean(dim=(2, 3), keepdim=True)
    return hed_to_rgb(hed * alpha + beta * mean_density).to(rgb.dtype)


def colour_jitter(
    rgb: torch.Tensor,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Brightness, contrast and saturation factors drawn per image from U(1-x, 1+x)."""
    n = rgb.shape[0]
    factors = 1.0 + (torch.rand(n, 3, generator=gen) * 2 - 1) * torch.tensor(
        [brightness, contrast, saturation]
    )
    out = []
    for image, (b, c, s) in zip(rgb, factors.tolist(), strict=True):
        image = F.adjust_brightness(image, b) if brightness else image
        image = F.adjust_contrast(image, c) if contrast else image
        image = F.adjust_saturation(image, s) if saturation else image
        out.append(image)
    return torch.stack(out).clamp_(0.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class PatchAugment:
    """Which histology augmentations a training batch gets (from TrainConfig)."""

    dihedral: bool = True
    hed_sigma: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0


def augment_patches(
    batch_u8: torch.Tensor, aug: PatchAugment, gen: torch.Generator
) -> torch.Tensor:
    """Dihedral symmetry, stain and colour jitter of a uint8 batch; returns uint8.

    The draws are made in a fixed order (symmetries, stain, colour) whether or not a
    step is enabled, so turning one augmentation off does not shift the others' draws.
    """
    n = batch_u8.shape[0]
    which = torch.randint(0, 8, (n,), generator=gen)
    stain_gen, colour_gen = (
        torch.Generator().manual_seed(int(s)) for s in torch.randint(0, 2**62, (2,), generator=gen)
    )
    out = dihedral(batch_u8, which) if aug.dihedral else batch_u8
    if not (aug.hed_sigma or aug.brightness or aug.contrast or aug.saturation):
        return out
    x = out.float().div_(255.0)
    if aug.hed_sigma:
        x = hed_jitter(x, aug.hed_sigma, stain_gen)
    if aug.brightness or aug.contrast or aug.saturation:
        x = colour_jitter(
            x,
            brightness=aug.brightness,
            contrast=aug.contrast,
            saturation=aug.saturation,
            gen=colour_gen,
        )
    return x.mul_(255.0).round_().to(torch.uint8)


def grid_patches(image: torch.Tensor, size: int) -> torch.Tensor:
    """Non-overlapping ``size`` patches covering the image (the last row and column are
    shifted inwards to end at the border), for averaging predictions over the image."""
    h, w = image.shape[-2:]
    if size > h or size > w:
        raise DataError(f"train.patch_size={size} exceeds an image of {w} x {h} px")
    tops = sorted({*range(0, h - size + 1, size), h - size})
    lefts = sorted({*range(0, w - size + 1, size), w - size})
    return torch.stack([image[:, t : t + size, x : x + size] for t in tops for x in lefts])
