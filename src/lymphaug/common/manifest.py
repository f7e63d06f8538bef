"""The CSV contracts between stages, and the guard that keeps test images out.

Columns (paths are relative to the data set's own folder, POSIX separators):

- ``data/raw/manifest.csv``: path, class, sha256, width, height, source
- ``data/split.csv``: path (relative to data/raw), class, split (train/val/test), fold
- ``data/dct/manifest.csv``: path, class, method, copy, source (a data/raw path)
- ``data/synthetic/manifest.csv``: path, class, prompt, seed, scheduler, steps,
  guidance, mode, strength, source (a data/raw path for img2img, else empty)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lymphaug.common.errors import DataError, LeakageError
from lymphaug.common.files import atomic_path

RAW_COLUMNS = ["path", "class", "sha256", "width", "height", "source"]
SPLIT_COLUMNS = ["path", "class", "split", "fold"]
DCT_COLUMNS = ["path", "class", "method", "copy", "source"]
SYNTHETIC_COLUMNS = [
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
