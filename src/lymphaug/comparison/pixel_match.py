"""Near copies in pixel space: a check that needs no feature extractor, so every run has it.

A feature extractor that cannot tell two real images apart cannot say whether a synthetic
image copies a training image, and the report refuses such an extractor. Pixels can say it.
Take the centre square of an image, in grey, at the classifier's scale. Slide it over every
position of every training image. Keep the highest normalised cross-correlation (NCC: 1 means
the same pixels up to brightness and contrast). Sliding matters: an img2img image, or a crop
of a training image, need not sit where its source does. So do flips: the generator trains on
training crops flipped left-right and upside down, so each patch is also matched flipped both
ways and turned by 180 degrees, and the best of the four counts.

The held-out real images (validation and test) give the yardstick. They share tissue and
stain with the training images, but the generator never saw them: their highest NCC shows how
alike two different real images are. A synthetic image above every held-out real image is
nearer a training image than real data explains. One at :data:`COPY_NCC` or above is a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

PATCH = 64  # px of the centre square, at the classifier's scale
COPY_NCC = 0.9  # at or above: the same picture, whatever else differs
FLAT_STD = 0.01  # grey levels: a window (or patch) varying less has nothing to correlate: 0


@dataclass(frozen=True, kw_only=True)
class PixelMatch:
    """The highest NCC of each image's centre patch with any training image."""

    patch: int  # side of the centre square, px
    scale: float  # the images were rescaled by this first (the classifier's train.scale)
    synthetic: np.ndarray  # one per synthetic image, in manifest order
    held_out: np.ndarray  # one per held-out real image (validation, then test)

    @property
    def above_held_out(self) -> int | None:
        """Synthetic images nearer a training image than any held-out real image is."""
        if not self.held_out.size:
            return None
        return int((self.synthetic > self.held_out.max()).sum())

    @property
    def copies(self) -> int:
        return int((self.synthetic >= COPY_NCC).sum())


def grey(rgb: np.ndarray, scale: float) -> np.ndarray:
    """An HxWx3 uint8 image as float64 luma (ITU-R 601), resized by ``scale`` as the
    classifier resizes it (antialiased)."""
    import torch

    from lymphaug.classifier.transforms import rescale

    chw = rescale(torch.from_numpy(np.array(rgb)).permute(2, 0, 1), scale)  # a writable copy
    return np.tensordot([0.299, 0.587, 0.114], chw.numpy().astype(np.float64), axes=1)


def centre_patch(image: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` square of a 2-D image."""
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def patch_size(images: list[np.ndarray]) -> int:
    """:data:`PATCH`, or the shortest side among ``images`` when one is smaller."""
    return min([PATCH, *(min(image.shape) for image in images)])


def _window_sums(stack: np.ndarray, size: int) -> np.ndarray:
    """Sum over every ``size`` x ``size`` window of each image of an (N, H, W) stack."""
    padded = np.pad(stack, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2)
    return (
        padded[:, size:, size:]
        - padded[:, :-size, size:]
        - padded[:, size:, :-size]
        + padded[:, :-size, :-size]
    )


def flips(patch: np.ndarray) -> list[np.ndarray]:
    """The patch as the generator may have seen it: as is, flipped either way, both."""
    return [patch, patch[:, ::-1], patch[::-1, :], patch[::-1, ::-1]]


def best_ncc(patches: list[np.ndarray], images: list[np.ndarray]) -> np.ndarray:
    """For each square patch, its highest NCC over every position of every image.

    Images of one shape are stacked and transformed once, each less its own mean (NCC does
    not change, and float32 spectra keep their precision). The correlation at each position
    is an FFT product (no wrap-around: only positions where the patch lies inside the image
    are read). The window means and energies come from summed-area tables. A flat patch or
    window (standard deviation under :data:`FLAT_STD`) scores 0.
    """
    if not images:
        raise ValueError("no images to match the patches against")
    if not patches:
        return np.zeros(0)
    size = patches[0].shape[0]
    best = np.full(len(patches), -1.0)
    by_shape: dict[tuple[int, int], list[np.ndarray]] = {}
    for image in images:
        by_shape.setdefault(image.shape, []).append(image)
    for (height, width), group in sorted(by_shape.items()):
        stack = np.stack(group)
        stack = stack - stack.mean(axis=(1, 2), keepdims=True)
        # float32 spectra: NCC needs no more, and they halve the time of the FFTs
        spectra = np.fft.rfft2(stack.astype(np.float32))
        sums = _window_sums(stack, size)
        # each window's energy about its own mean, sum x^2 - (sum x)^2 / n (float64 sums)
        spread = np.sqrt(np.maximum(_window_sums(stack**2, size) - sums**2 / size**2, 0.0))
        flat = spread <= FLAT_STD * size  # spread = std * size for a size x size window
        inverse_spread = np.divide(1.0, spread, out=np.zeros_like(spread), where=~flat)
        inverse_spread = inverse_spread.astype(np.float32)
        for i, patch in enumerate(patches):
            centred = patch - patch.mean()
            norm = np.sqrt((centred**2).sum())
            if norm <= FLAT_STD * size:
                best[i] = max(best[i], 0.0)
                continue
            for variant in flips(centred):
                kernel = np.zeros((height, width), np.float32)
                kernel[:size, :size] = variant
                spectrum = np.conj(np.fft.rfft2(kernel))
                correlation = np.fft.irfft2(spectra * spectrum, s=(height, width))
                valid = correlation[:, : height - size + 1, : width - size + 1]
                best[i] = max(best[i], float((valid * inverse_spread).max()) / norm)
    return np.minimum(best, 1.0)  # float32 rounding can lift an exact copy past 1


def measure(
    *,
    synthetic: list[Path],
    training: list[Path],
    held_out: list[Path],
    scale: float,
) -> PixelMatch:
    """Read the images (at ``scale``, in grey) and match synthetic and held-out real patches
    against the training images."""
    from lymphaug.common.errors import DataError
    from lymphaug.common.images import read_rgb

    def load(paths: list[Path]) -> list[np.ndarray]:
        return [grey(read_rgb(path), scale) for path in paths]

    if not training:
        raise DataError("compare's pixel copy check: the split has no training images")
    train, syn, real = load(training), load(synthetic), load(held_out)
    size = patch_size(train + syn + real)
    # one call: the training images are stacked and transformed once for both sets
    scores = best_ncc([centre_patch(image, size) for image in syn + real], train)
    return PixelMatch(
        patch=size, scale=scale, synthetic=scores[: len(syn)], held_out=scores[len(syn) :]
    )
