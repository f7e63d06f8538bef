"""Training, validation and test sets per condition, decoded once into uint8 tensors.

Why in memory: the whole real set is ~150 MB as uint8, and decoding PNGs per item
every epoch (the reference study's per-item PIL pipeline) costs more than the
frozen network itself. Training batches are augmented as tensors
(RandomResizedCrop, flips) with a seeded ``torch.Generator`` so a resumed run draws
the same crops as an uninterrupted one; the evaluation sets are resized and
center-cropped once.

Validation and test sets are always real images; DCT and synthetic images join the
training set only, and any of them derived from a non-training image is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from lymphaug.common import manifest
from lymphaug.common.config import CONDITIONS, Params
from lymphaug.common.errors import DataError
from lymphaug.common.images import read_rgb
from lymphaug.common.paths import Layout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageSet:
    """Decoded images (uint8, CHW; sizes may differ) with integer labels."""

    images: list[torch.Tensor]
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    manifests: dict[str, pd.DataFrame]  # name -> rows used (for MLflow dataset inputs)


def decode(paths: list[Path], desc: str = "decode") -> list[torch.Tensor]:
    """Decode each file once to a uint8 CHW tensor."""
    out = []
    for p in tqdm(paths, desc=desc, disable=None, leave=False):
        out.append(torch.from_numpy(read_rgb(p).copy()).permute(2, 0, 1).contiguous())
    return out


def _labels(classes_col: pd.Series, classes: list[str], source: Path) -> torch.Tensor:
    unknown = sorted(set(classes_col) - set(classes))
    if unknown:
        raise DataError(f"{source}: class(es) {unknown} are not in params classes {classes}")
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[c] for c in classes_col], dtype=torch.long)


def _image_set(
    folder: Path, rows: pd.DataFrame, *, classes: list[str], src: Path, desc: str
) -> ImageSet:
    """Decode the images ``rows`` lists under ``folder``; ``src`` names the list in errors."""
    files = [folder / p for p in rows["path"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{src}: {len(missing)} listed image(s) missing, e.g. {missing[0]}")
    return ImageSet(
        decode(files, desc), _labels(rows["class"], classes, src), [str(f) for f in files]
    )


def extra_training_rows(
    condition: str, params: Params, layout: Layout, split: pd.DataFrame
) -> tuple[Path, pd.DataFrame, Path]:
    """(folder, manifest rows, manifest path) of the images a condition adds to training."""
    if condition == "dct":
        folder, columns = layout.dct, manifest.DCT_COLUMNS
    elif condition == "synthetic":
        folder = layout.synthetic_training_dir(params.train.synthetic_dir)
        columns = manifest.SYNTHETIC_COLUMNS
    else:
        raise DataError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    if not folder.is_dir():
        stage = "dct" if condition == "dct" else "generate"
        raise DataError(
            f"condition {condition}: data folder {folder} does not exist "
            f"(run `dvc repro {stage}` or fix train.synthetic_dir)"
        )
    path = folder / "manifest.csv"
    rows = manifest.read_table(path, columns)
    if condition == "dct":
        wanted = list(params.train.dct_methods)
        absent = sorted(set(wanted) - set(rows["method"]))
        if absent:
            raise DataError(f"{path}: no images of DCT method(s) {absent} (train.dct_methods)")
        rows = rows[rows["method"].isin(wanted)]
        sources = list(rows["source"])
    else:
        sources = [s for s in rows["source"] if s]
    manifest.assert_train_only(sources, split, f"train ({condition} condition)")
    return folder, rows.reset_index(drop=True), path


def load_splits(condition: str, params: Params, layout: Layout) -> Splits:
    """Read split.csv (and the condition's extra images) and decode every image once."""
    classes = list(params.classes)
    split = manifest.read_table(layout.split_csv, manifest.SPLIT_COLUMNS)
    by = {s: split[split["split"] == s].reset_index(drop=True) for s in manifest.SPLITS}
    for s in manifest.SPLITS:
        if by[s].empty:
            raise DataError(f"{layout.split_csv}: the {s} split is empty")
    empty = [c for c in classes if c not in set(by["train"]["class"])]
    if empty:
        raise DataError(
            f"{layout.split_csv}: class(es) {empty} have no training images after the split; "
            "add images or change split.test_fraction/val_fraction"
        )
    train = _image_set(
        layout.raw, by["train"], classes=classes, src=layout.split_csv, desc="decode train"
    )
    manifests = {"train": by["train"], "val": by["val"], "test": by["test"]}
    if condition != "base":
        folder, rows, mpath = extra_training_rows(condition, params, layout, split)
        extra = _image_set(folder, rows, classes=classes, src=mpath, desc=f"decode {condition}")
        train = ImageSet(
            train.images + extra.images,
            torch.cat([train.labels, extra.labels]),
            train.paths + extra.paths,
        )
        manifests[condition] = rows
    val = _image_set(
        layout.raw, by["val"], classes=classes, src=layout.split_csv, desc="decode val"
    )
    test = _image_set(
        layout.raw, by["test"], classes=classes, src=layout.split_csv, desc="decode test"
    )
    return Splits(train, val, test, manifests)


# --- tensor transforms -------------------------------------------------------


def normalize(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float, ImageNet-normalised, channels-last (faster convolutions on CPU)."""
    x = batch_u8.float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


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
