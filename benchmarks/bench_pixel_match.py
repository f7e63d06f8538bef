"""The report's pixel copy check on the real lymphoma set (not a test).

    python benchmarks/bench_pixel_match.py [--train 239] [--patches 12] [--scale 0.5]

Times :func:`lymphaug.comparison.pixel_match.best_ncc` (the training images stacked and
transformed once, float32 spectra, summed-area windows) beside the plain way in the same
process: ``scipy.signal.fftconvolve``, float64, twice per image for its window energies and
once per (patch, flip, image) for the correlation. Both match the 4 flips of each patch and
see the same grey images at the classifier's scale; the script prints patches/s, the speed-up,
the largest difference in NCC between them, and peak traced memory of each. fold 0 of the
cpu profile matches 90 synthetic and 135 held-out patches against 239 training images.
Without the data set, random images of its size stand in (and the script says so).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

from lymphaug.common.images import read_rgb
from lymphaug.comparison.pixel_match import (
    FLAT_STD,
    best_ncc,
    centre_patch,
    flips,
    grey,
    patch_size,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lymphoma"


def plain_best_ncc(patches: list[np.ndarray], images: list[np.ndarray]) -> np.ndarray:
    """The textbook way: per image, its window energies once (two FFT convolutions); per
    (patch, flip, image), the correlation by one more."""
    size = patches[0].shape[0]
    ones = np.ones((size, size))
    spreads = []
    for image in images:
        sums = fftconvolve(image, ones, mode="valid")
        squares = fftconvolve(image**2, ones, mode="valid")
        spreads.append(np.sqrt(np.maximum(squares - sums**2 / size**2, 0.0)))
    best = []
    for patch in patches:
        centred = patch - patch.mean()
        norm = np.sqrt((centred**2).sum())
        scores = []
        for variant in flips(centred):
            for image, spread in zip(images, spreads, strict=True):
                numerator = fftconvolve(image, variant[::-1, ::-1], mode="valid")
                ncc = np.where(spread > FLAT_STD * size, numerator / (norm * spread), 0.0)
                scores.append(float(ncc.max()))
        best.append(max(scores))
    return np.array(best)


def load(n_train: int, n_patches: int, scale: float) -> tuple[list, list, str]:
    paths = sorted(DATA.rglob("*.png"))
    rng = np.random.default_rng(0)
    if len(paths) >= n_train + n_patches:
        chosen = rng.permutation(len(paths))[: n_train + n_patches]
        images = [grey(read_rgb(paths[i]), scale) for i in chosen]
        source = f"{DATA} ({len(paths)} images)"
    else:
        size = (round(312 * scale), round(417 * scale))
        images = [rng.uniform(0, 255, size) for _ in range(n_train + n_patches)]
        source = f"random images of the data set's size ({DATA} not found)"
    return images[:n_train], images[n_train:], source


def timed(fn, *args) -> tuple[np.ndarray, float, float]:
    """(result, wall s, peak traced MiB); the wall time is from an untraced second call."""
    tracemalloc.start()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=239, help="training images to search")
    parser.add_argument("--patches", type=int, default=12, help="query images")
    parser.add_argument("--scale", type=float, default=0.5, help="the classifier's scale")
    args = parser.parse_args()
    train, queries, source = load(args.train, args.patches, args.scale)
    size = patch_size(train + queries)
    patches = [centre_patch(image, size) for image in queries]
    print(f"data: {source}; {len(patches)} patches of {size} px against {len(train)} images")

    fast, fast_s, fast_mib = timed(best_ncc, patches, train)
    plain, plain_s, plain_mib = timed(plain_best_ncc, patches, train)
    rate = len(patches) / fast_s
    print(f"best_ncc       {rate:8.2f} patches/s  {fast_s:7.2f} s  peak {fast_mib:7.1f} MiB")
    print(
        f"fftconvolve    {len(patches) / plain_s:8.2f} patches/s  {plain_s:7.2f} s  "
        f"peak {plain_mib:7.1f} MiB"
    )
    print(
        f"speed-up {plain_s / fast_s:.1f}x; largest NCC difference "
        f"{np.abs(fast - plain).max():.1e}; fold 0 (225 patches) at this rate: "
        f"{225 / rate:.0f} s"
    )


if __name__ == "__main__":
    main()
