"""Training, validation and test sets per condition, decoded once into uint8 tensors.

Why in memory: the whole real set is ~150 MB as uint8 (a quarter of that at
``train.scale: 0.5``), and decoding PNGs per item every epoch (the reference study's
per-item PIL pipeline) costs more than a small network itself. Batches are augmented
as tensors (:mod:`lymphaug.classifier.transforms`) with a seeded ``torch.Generator`` so
a resumed run draws the same crops and patches as an uninterrupted one.

Validation and test sets are always real images; DCT and synthetic images join the
training set only, and any of them derived from a non-training image, or made from
another fold or another version of this fold's split file, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lymphaug.classifier.transforms import rescale
from lymphaug.common import manifest
from lymphaug.common.config import CONDITIONS, Params
from lymphaug.common.errors import DataError
from lymphaug.common.files import sha256_file
from lymphaug.common.images import read_rgb
from lymphaug.common.paths import Layout
from lymphaug.common.progress import progress


@dataclass
class ImageSet:
    """Decoded images (uint8, CHW; sizes may differ) with integer labels.

    A training set of the dct or synthetic condition lists the real images first and the
    augmented ones after them: ``n_real`` says where the real ones end (None: all real),
    so that a budget in real-image epochs can draw them in a chosen proportion.
    """

    images: list[torch.Tensor]
    labels: torch.Tensor
    paths: list[str]
    n_real: int | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def real_count(self) -> int:
        return len(self.images) if self.n_real is None else self.n_real


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    manifests: dict[str, pd.DataFrame]  # name -> rows used (for MLflow dataset inputs)


def decode(paths: list[Path], desc: str = "decode", scale: float = 1.0) -> list[torch.Tensor]:
    """Decode each file once to a uint8 CHW tensor, rescaled by ``scale`` (train.scale)."""
    out = []
    for p in progress(paths, desc=desc, unit="img", inner=True):
        image = torch.from_numpy(read_rgb(p).copy()).permute(2, 0, 1).contiguous()
        out.append(rescale(image, scale))
    return out


def _labels(classes_col: pd.Series, classes: list[str], source: Path) -> torch.Tensor:
    unknown = sorted(set(classes_col) - set(classes))
    if unknown:
        raise DataError(f"{source}: class(es) {unknown} are not in params classes {classes}")
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[c] for c in classes_col], dtype=torch.long)


def _image_set(
    folder: Path,
    rows: pd.DataFrame,
    *,
    classes: list[str],
    src: Path,
    desc: str,
    scale: float = 1.0,
) -> ImageSet:
    """Decode the images ``rows`` lists under ``folder``; ``src`` names the list in errors."""
    files = [folder / p for p in rows["path"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{src}: {len(missing)} listed image(s) missing, e.g. {missing[0]}")
    return ImageSet(
        decode(files, desc, scale), _labels(rows["class"], classes, src), [str(f) for f in files]
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
            f"(run `lymphaug {stage} --fold {layout.fold}`, `dvc repro`, or fix "
            "train.synthetic_dir)"
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
    manifest.assert_same_split(
        rows,
        manifest_path=path,
        fold=layout.fold,
        split_path=layout.split_csv,
        split_sha256=sha256_file(layout.split_csv),
    )
    return folder, rows.reset_index(drop=True), path


def load_splits(condition: str, params: Params, layout: Layout) -> Splits:
    """Read the fold's split file (and the condition's extra images, checked to be this
    fold's) and decode every image once."""
    classes = list(params.classes)
    scale = params.train.scale
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
    real = {
        s: _image_set(
            layout.raw,
            by[s],
            classes=classes,
            src=layout.split_csv,
            desc=f"decode {s}",
            scale=scale,
        )
        for s in manifest.SPLITS
    }
    train = real["train"]
    manifests = {"train": by["train"], "val": by["val"], "test": by["test"]}
    if condition != "base":
        folder, rows, mpath = extra_training_rows(condition, params, layout, split)
        extra = _image_set(
            folder, rows, classes=classes, src=mpath, desc=f"decode {condition}", scale=scale
        )
        train = ImageSet(
            train.images + extra.images,
            torch.cat([train.labels, extra.labels]),
            train.paths + extra.paths,
            n_real=len(train),
        )
        manifests[condition] = rows
    return Splits(train, real["val"], real["test"], manifests)
