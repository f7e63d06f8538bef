"""The CSV contracts between stages, and the guard that keeps test images out.

Columns (paths are relative to the data set's own folder, POSIX separators):

- ``data/raw/manifest.csv``: path, class, sha256, width, height, source
- ``data/splits/fold_<f>.csv``: path (relative to data/raw), class, split
  (train/val/test), fold (f, on every row)
- ``data/dct/fold_<f>/manifest.csv``: path, class, method, copy, source (a data/raw
  path), then PROVENANCE_COLUMNS
- ``data/synthetic/fold_<f>/manifest.csv``: path, class, prompt, seed, scheduler, steps,
  guidance, mode, strength, source (a data/raw path for img2img, else empty), then
  PROVENANCE_COLUMNS

PROVENANCE_COLUMNS (fold, split_sha256): the fold an augmented set was learned from and
the sha256 of that fold's split file, on every row, so that a classifier can refuse a set
made from another fold's (or another split's) training images: those may include its
own test images (:func:`assert_same_split`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lymphaug.common.errors import DataError, LeakageError
from lymphaug.common.files import atomic_path

RAW_COLUMNS = ["path", "class", "sha256", "width", "height", "source"]
SPLIT_COLUMNS = ["path", "class", "split", "fold"]
PROVENANCE_COLUMNS = ["fold", "split_sha256"]
# what the augmentation itself knows about each image; the stage adds the provenance
DCT_ROW_COLUMNS = ["path", "class", "method", "copy", "source"]
DCT_COLUMNS = [*DCT_ROW_COLUMNS, *PROVENANCE_COLUMNS]
SYNTHETIC_ROW_COLUMNS = [
    "path",
    "class",
    "prompt",
    "seed",
    "scheduler",
    "steps",
    "guidance",
    "mode",
    "strength",
    "source",
]
SYNTHETIC_COLUMNS = [*SYNTHETIC_ROW_COLUMNS, *PROVENANCE_COLUMNS]
SPLITS = ("train", "val", "test")


def read_table(path: str | Path, columns: list[str]) -> pd.DataFrame:
    """Read a manifest CSV, naming the file and the missing columns on error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (has the stage that writes it run? try `dvc repro`)")
    try:
        df = pd.read_csv(
            path, dtype={"path": str, "class": str, "source": str}, keep_default_na=False
        )
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected {columns}")
    return df


def write_table(df: pd.DataFrame, path: str | Path, columns: list[str]) -> None:
    """Write a manifest CSV atomically, columns in contract order, rows sorted by path."""
    df = df[columns].sort_values("path", kind="stable").reset_index(drop=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def assert_train_only(raw_paths: Iterable[str], split: pd.DataFrame, stage: str) -> None:
    """Fail loudly if any image handed to ``stage`` is not in the training split.

    Augmentation and diffusion fine-tuning may only ever see training images;
    a validation or test image reaching them is the leak the reference study had.
    """
    assignment = dict(zip(split["path"], split["split"], strict=True))
    leaked = [p for p in raw_paths if assignment.get(p) != "train"]
    if leaked:
        shown = ", ".join(f"{p} ({assignment.get(p, 'not in split')})" for p in leaked[:5])
        more = f" and {len(leaked) - 5} more" if len(leaked) > 5 else ""
        raise LeakageError(
            f"{stage} was handed {len(leaked)} image(s) outside the training split: {shown}{more}"
        )


def with_provenance(rows: pd.DataFrame, *, fold: int, split_sha256: str) -> pd.DataFrame:
    """``rows`` of an augmented set, stamped with the fold and split file it was made from."""
    return rows.assign(fold=fold, split_sha256=split_sha256)


def assert_same_split(
    rows: pd.DataFrame, *, manifest_path: Path, fold: int, split_path: Path, split_sha256: str
) -> None:
    """Refuse an augmented set made from another fold or another version of the split.

    Why: a DCT or synthetic set learned from fold 1's training images contains (copies of,
    or a generator fitted on) fold 0's test images; handed to a fold-0 classifier it leaks
    them. The manifest's fold and split digest must be this classifier's.
    """
    recorded = pd.to_numeric(rows["fold"], errors="coerce")
    if recorded.isna().any() or rows["split_sha256"].isna().any():
        raise LeakageError(
            f"{manifest_path}: records no fold or split digest (made before folds existed?): "
            f"it cannot be shown to hold none of fold {fold}'s test images; rerun the stage "
            "that writes it (dvc repro)"
        )
    folds = sorted({int(f) for f in recorded})
    digests = sorted({str(d) for d in rows["split_sha256"]})
    if folds != [fold]:
        raise LeakageError(
            f"{manifest_path}: made from fold(s) {folds}, but this classifier trains on fold "
            f"{fold} ({split_path}): a set learned from another fold's training images holds "
            "this fold's test images; rerun the stage that writes it with --fold "
            f"{fold} (dvc repro)"
        )
    if digests != [split_sha256]:
        shown = ", ".join(d[:12] for d in digests)
        raise LeakageError(
            f"{manifest_path}: made from a split file with sha256 {shown}, but {split_path} "
            f"is {split_sha256[:12]}: the split changed since this set was made, so it may "
            "hold test images; rerun the stage that writes it (dvc repro)"
        )
