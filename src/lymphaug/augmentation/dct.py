"""The reference study's two DCT augmentations, corrected and vectorised.

Both methods work on whole batches ``(N, H, W, C)`` with ``scipy.fft.dctn``/``idctn``
(``norm="ortho"``, axes H and W, i.e. a 2-D DCT per image and colour channel) in
float32; there is no per-pixel Python.

Method 1 (coefficient band, deterministic). For each image and channel, take the
histogram mode ``m`` of the channel's uint8 pixel values (the lowest value on a tie)
and their standard deviation ``s``. Every DCT coefficient whose *magnitude* ``|c|``
lies outside ``[m - k*s, m + k*s]`` (``k = method1_std_multiplier``) is set to zero;
the DC coefficient is always kept, so the image mean is preserved (before clipping).
This is the study's definition taken literally: the band is in pixel-value units and
is compared with coefficient magnitudes. With an orthonormal DCT the AC coefficients'
RMS equals the pixel std, so the band typically drops both the many small
(fine-detail) coefficients below ``m - k*s`` and the few strongest ones above
``m + k*s``: a strong, channel-dependent band-pass (on real images 0.1-50 % of a
channel's coefficients survive). It has no randomness, so copies would be identical:
method 1 writes one image per training image whatever ``copies_per_image`` says.

Method 2 (coefficient noise, seeded). Every coefficient but DC gets ``sigma * u``
with ``u ~ U(-0.5, 0.5)``, ``sigma = method2_sigma`` (the original computed sigma as
the std of a scalar, i.e. 0, and returned its input). The orthonormal DCT preserves
energy, so the pixel-domain noise std is ``sigma / sqrt(12)``. Each (image, copy) has
its own generator, ``SeedSequence(dct.seed, spawn_key=(hash(raw path), copy))``, so an
image's noise does not depend on the batch it was processed in or on the other images.

Both: results are rounded and clipped to 0..255 (never wrapped, the original's
speckle), and only training images are accepted (:func:`augment_dataset` calls
:func:`lymphaug.common.manifest.assert_train_only` on what it is handed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft

from lymphaug.common import manifest
from lymphaug.common.config import DctConfig
from lymphaug.common.errors import DataError
from lymphaug.common.files import writing
from lymphaug.common.images import png_bytes, read_rgb, to_uint8
from lymphaug.common.progress import progress

AXES = (1, 2)  # H, W of an (N, H, W, C) batch
BATCH = 16  # images per transform call: ~1.6 MB each as float32 at 312 x 417
WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def dct2(x: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT-II of every image and channel of an (N, H, W, C) float batch."""
    return scipy.fft.dctn(x, axes=AXES, norm="ortho", workers=WORKERS)


def idct2(c: np.ndarray) -> np.ndarray:
    return scipy.fft.idctn(c, axes=AXES, norm="ortho", workers=WORKERS, overwrite_x=True)


def channel_histograms(batch: np.ndarray) -> np.ndarray:
    """256-bin histogram of each image's channel, (N, C, 256), for a uint8 (N, H, W, C) batch."""
    n, c = batch.shape[0], batch.shape[-1]
    planes = np.ascontiguousarray(np.moveaxis(batch, -1, 1)).reshape(n, c, -1)
    return np.array(
        [[np.bincount(planes[i, j], minlength=256) for j in range(c)] for i in range(n)]
    )


def mode_and_std(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image and channel (N, C): histogram mode (lowest value on a tie) and pixel std.

    Both come from one histogram; the std from its moments is exact to ~1e-11.
    """
    hist = channel_histograms(batch).astype(np.float64)
    values = np.arange(256.0)
    count = hist.sum(axis=-1)
    mean = hist @ values / count
    var = np.maximum(hist @ (values * values) / count - mean * mean, 0.0)
    return hist.argmax(axis=-1), np.sqrt(var)


def method1_float(batch: np.ndarray, k: float) -> np.ndarray:
    """Method 1 before rounding/clipping: float32 (N, H, W, C) from a uint8 batch."""
    mode, std = mode_and_std(batch)
    centre = mode.astype(np.float32)[:, None, None, :]
    half_width = (k * std).astype(np.float32)[:, None, None, :]
    coef = dct2(batch.astype(np.float32))
    dc = coef[:, 0, 0, :].copy()
    # |c| outside [mode - k*std, mode + k*std]  <=>  ||c| - mode| > k*std
    dist = np.abs(coef)
    dist -= centre
    np.abs(dist, out=dist)
    np.copyto(coef, np.float32(0.0), where=dist > half_width)
    coef[:, 0, 0, :] = dc
    return idct2(coef)


def method1(batch: np.ndarray, k: float) -> np.ndarray:
    """Method 1 (see module docstring): uint8 (N, H, W, C) -> uint8, same shape."""
    return to_uint8(method1_float(batch, k))


def method2_float(
    coef: np.ndarray, sigma: float, rngs: Sequence[np.random.Generator]
) -> np.ndarray:
    """Method 2 before rounding/clipping, from precomputed coefficients (left unchanged)."""
    if len(rngs) != len(coef):
        raise ValueError(f"need one generator per image: {len(rngs)} for {len(coef)}")
    noise = np.empty(coef.shape, np.float32)  # C order: noise[i] is contiguous for out=
    for i, rng in enumerate(rngs):  # one call per image: seeded per image, not per batch
        rng.random(out=noise[i], dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(sigma)
    noise[:, 0, 0, :] = 0.0  # DC keeps the image mean
    noise += coef
    return idct2(noise)


def method2(batch: np.ndarray, sigma: float, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Method 2 (see module docstring): uint8 (N, H, W, C) -> uint8, one generator per image."""
    return to_uint8(method2_float(dct2(batch.astype(np.float32)), sigma, rngs))


def image_rng(seed: int, raw_path: str, copy: int) -> np.random.Generator:
    """The generator for one (image, copy): independent of batch and list order."""
    key = int.from_bytes(hashlib.sha256(raw_path.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, copy)))


def copies_for(method: str, cfg: DctConfig) -> int:
    """Method 1 is deterministic: further copies would be byte-identical duplicates."""
    return 1 if method == "method1" else cfg.copies_per_image


def augmented_copies(
    batch: np.ndarray, raw_paths: Sequence[str], method: str, cfg: DctConfig
) -> list[tuple[int, np.ndarray]]:
    """All augmented copies of a same-shape uint8 batch: [(copy, (N, H, W, C) uint8)]."""
    if method == "method1":
        return [(0, method1(batch, cfg.method1_std_multiplier))]
    coef = dct2(batch.astype(np.float32))  # shared by all copies
    out = []
    for copy in range(cfg.copies_per_image):
        rngs = [image_rng(cfg.seed, p, copy) for p in raw_paths]
        out.append((copy, to_uint8(method2_float(coef, cfg.method2_sigma, rngs))))
    return out


def output_name(method: str, cls: str, raw_path: str, copy: int) -> str:
    """Path of an augmented image relative to data/dct: <method>/<class>/<stem>_c<copy>.png."""
    return f"{method}/{cls}/{Path(raw_path).stem}_c{copy}.png"


def augment_dataset(
    raw_root: Path,
    images: pd.DataFrame,
    *,
    split: pd.DataFrame,
    cfg: DctConfig,
    out_root: Path,
    batch_size: int = BATCH,
) -> pd.DataFrame:
    """Augment ``images`` (columns path, class; paths relative to ``raw_root``) into ``out_root``.

    Refuses (LeakageError) any image that ``split`` does not put in the training split.
    Decodes each image once for all methods, transforms same-size images in batches and
    encodes/writes PNGs in a thread pool (zlib releases the GIL) while the next batch is
    transformed. Returns the rows of the DCT manifest (manifest.DCT_ROW_COLUMNS; the stage
    adds the fold and split digest).
    """
    paths = images["path"].tolist()
    manifest.assert_train_only(paths, split, "dct")
    classes = dict(zip(images["path"], images["class"], strict=True))
    names = [output_name("m", classes[p], p, 0) for p in paths]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:5]
        raise DataError(f"two training images of one class share a file stem: {dup}")
    rows: list[dict] = []
    pending: list[Future] = []

    def write(rel: str, array: np.ndarray) -> None:
        target = out_root / rel
        with writing(target):  # a full disk names this file (as published, via atomic_path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png_bytes(array))

    with (
        ThreadPoolExecutor(WORKERS) as pool,
        progress(total=len(paths), desc="dct", unit="img") as bar,
    ):
        chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        decoding = [pool.submit(read_rgb, raw_root / p) for p in chunks[0]] if chunks else []
        for k, chunk in enumerate(chunks):
            arrays = [f.result() for f in decoding]
            if k + 1 < len(chunks):  # prefetch: decode k+1 while k is transformed
                decoding = [pool.submit(read_rgb, raw_root / p) for p in chunks[k + 1]]
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, a in enumerate(arrays):
                by_shape.setdefault(a.shape, []).append(i)
            outputs = []
            for idx in by_shape.values():
                batch = np.stack([arrays[i] for i in idx])
                batch_paths = [chunk[i] for i in idx]
                for method in cfg.methods:
                    for copy, result in augmented_copies(batch, batch_paths, method, cfg):
                        for j, raw_path in enumerate(batch_paths):
                            rel = output_name(method, classes[raw_path], raw_path, copy)
                            outputs.append((rel, result[j]))
                            rows.append(
                                {
                                    "path": rel,
                                    "class": classes[raw_path],
                                    "method": method,
                                    "copy": copy,
                                    "source": raw_path,
                                }
                            )
            for f in pending:  # bound memory: encoding k-1 overlapped with transforming k
                f.result()
            pending = [pool.submit(write, rel, arr) for rel, arr in outputs]
            bar.update(len(chunk))
        for f in pending:
            f.result()
    return pd.DataFrame(rows, columns=manifest.DCT_ROW_COLUMNS)


def training_images(raw: pd.DataFrame, split: pd.DataFrame, split_csv: Path) -> pd.DataFrame:
    """The training rows of ``split``, checked against the raw manifest (a stale split fails)."""
    unknown = sorted(set(split["path"]) - set(raw["path"]))
    if unknown:
        raise DataError(
            f"{split_csv}: {len(unknown)} path(s) not in the raw manifest, e.g. {unknown[:3]} "
            "(rerun `lymphaug split` / `dvc repro`)"
        )
    return split.loc[split["split"] == "train", ["path", "class"]].reset_index(drop=True)
