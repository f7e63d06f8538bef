"""The IICBU lymphoma benchmark's MATLAB file (``DatasColor_29.mat``): images, labels, folds.

Why read it: the reference study trained on fold 1 of this file's predefined
5-fold division, so reading it is the only way to reproduce that exact split.

Layout (the convention of the benchmark's MATLAB code), in the cell array
``images_key`` (default ``DATA``)::

    DATA{1}  1 x N cell of images (H x W x 3 uint8, or any PIL-convertible array)
    DATA{2}  1 x N labels, 1..C in the order of ``classes``
    DATA{3}  folds x N: row f is a permutation of 1..N; its first DIM1 entries are
             fold f's training images, the rest its test images
    DATA{4}  DIM1, the number of training images per fold
    DATA{5}  DIM2, the number of images used (N)

Image k (0-based) becomes ``<class>/<k>.png`` zero-padded to 3 digits, the same
names as the shared PNG copy of this set (CLL 000-112, FL 113-251, MCL 252-373).
Every fold's division is written beside the manifest as ``predefined_split.csv``
(manifest.SPLIT_COLUMNS, one row per image and fold, ``fold`` 0-based = row - 1; a
fold's held-out part is called ``val``, as in the study, which had no separate test
set); ``split`` picks the folds (``ingest.mat.fold`` alone, or all of them).

MATLAB v7.3 files are HDF5, which scipy cannot read: re-save with ``save -v7``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from lymphaug.common.errors import DataError
from lymphaug.common.images import to_rgb8


@dataclass(frozen=True)
class MatData:
    images: list[np.ndarray]  # as stored; converted lazily by array_to_rgb8
    labels: np.ndarray  # 0-based class index per image
    train_index: np.ndarray  # 0-based indices of the chosen fold's training images
    fold_train_indices: tuple[np.ndarray, ...] = ()  # every fold's, in the file's row order


def array_to_rgb8(array: np.ndarray) -> np.ndarray:
    """An image array from the file (uint8/uint16/float, gray or RGB) as HxWx3 uint8."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] in (3, 4):
        img = Image.fromarray(np.ascontiguousarray(arr), "RGB" if arr.shape[2] == 3 else "RGBA")
    elif arr.ndim == 3 and arr.shape[2] == 3:
        scale = 65535.0 if arr.dtype == np.uint16 else (255.0 if arr.max() > 1 else 1.0)
        rgb = np.clip(np.rint(arr.astype(np.float64) / scale * 255.0), 0, 255)
        img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    elif arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16):
        hi = 255.0 if arr.dtype == np.uint8 else 65535.0
        img = Image.fromarray(np.rint(arr / hi * 255.0).astype(np.uint8), "L")
    elif arr.ndim == 2:  # float or wider ints: PIL's "F", scaled by its range in to_rgb8
        img = Image.fromarray(np.ascontiguousarray(arr.astype(np.float32)), "F")
    else:
        raise DataError(f"not an image array (shape {arr.shape}, dtype {arr.dtype})")
    return np.asarray(to_rgb8(img))


def _scalar(value: object, what: str) -> int:
    arr = np.asarray(value).ravel()
    if arr.size != 1:
        raise DataError(f"{what} should be one number, got shape {np.asarray(value).shape}")
    return int(arr[0])


def load(path: Path, key: str, n_classes: int, fold: int) -> MatData:
    """Read and check the file; every problem names the file and the cell."""
    if not path.is_file():
        raise DataError(f"{path}: MATLAB file not found")
    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError:
        raise DataError(f"{path}: a MATLAB v7.3 (HDF5) file; re-save it with `save -v7`") from None
    except (ValueError, OSError, TypeError) as err:
        raise DataError(f"{path}: not a readable MATLAB file ({err})") from None
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path}: no variable {key!r} (ingest.mat.images_key); it has {found}")
    cells = np.asarray(mat[key]).ravel()
    if cells.dtype != object or cells.size < 4:
        raise DataError(f"{path}: {key} should be a cell array {{images, labels, folds, DIM1}}")
    images = list(np.asarray(cells[0]).ravel())
    labels = np.asarray(cells[1]).ravel().astype(int) - 1
    div = np.atleast_2d(np.asarray(cells[2])).astype(int) - 1
    dim1 = _scalar(cells[3], f"{key}{{4}}")
    n = len(images)
    if labels.size != n:
        raise DataError(f"{path}: {key}{{2}} has {labels.size} labels for {n} images")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise DataError(
            f"{path}: {key}{{2}} labels span {labels.min() + 1}..{labels.max() + 1}, "
            f"but {n_classes} classes are configured"
        )
    if not 1 <= fold <= div.shape[0]:
        raise DataError(f"{path}: ingest.mat.fold {fold} out of range 1..{div.shape[0]}")
    for number, row in enumerate(div, start=1):
        if div.shape[1] != n or sorted(row.tolist()) != list(range(n)) or not 0 < dim1 < n:
            raise DataError(
                f"{path}: {key}{{3}} row {number} is not a permutation of 1..{n} "
                f"with DIM1={dim1} training images"
            )
    every = tuple(np.sort(row[:dim1]) for row in div)
    return MatData(images, labels, every[fold - 1], every)
