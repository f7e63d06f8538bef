"""``split`` stage: stratified, seeded train / val / test assignment of every raw image.

Why per class and seeded per class: every class must be represented in every split
(a 3-class problem with no MCL test image cannot be evaluated), and the assignment of
one class must not change when another class gains or loses an image. Each class is
shuffled by its own generator, seeded from ``(split.seed, crc32(class name))``, over
its paths in sorted order, so the result depends only on the seed and the set of
paths, never on the manifest's row order.

Sizes per class of ``n`` images: ``n_test = round(n * test_fraction)``, then
``n_val = round((n - n_test) * val_fraction)``, each raised to at least 1 (and kept
small enough that at least one training image remains). A class too small for that
is an error, not a silently empty split.

With ``k_folds >= 2`` the test split is drawn exactly as above and the remaining
images of each class are dealt into folds ``0..k-1`` (stratified: each class's
images are spread over the folds round-robin after shuffling); fold ``fold`` is the
validation split and ``val_fraction`` is not used. With ``k_folds = 0`` ``fold`` is -1.
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np
import pandas as pd

from lymphaug.common import manifest
from lymphaug.common.config import Params, SplitConfig
from lymphaug.common.errors import DataError
from lymphaug.common.paths import Layout


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _class_rng(seed: int, cls: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(cls.encode())])


def split_sizes(n: int, cfg: SplitConfig, cls: str = "?") -> tuple[int, int]:
    """Number of test and val images for a class of ``n`` (val is 0 in k-fold mode).

    Raises DataError naming the class when ``n`` cannot give every split an image.
    """
    want_val = cfg.k_folds == 0 and cfg.val_fraction > 0
    pool_min = cfg.k_folds if cfg.k_folds else 1 + int(want_val)  # train (+ val) or k folds
    if n < 1 + pool_min:
        need = (
            f"1 test + {cfg.k_folds} (one per fold)"
            if cfg.k_folds
            else "1 test + 1 val + 1 train"
            if want_val
            else "1 test + 1 train"
        )
        raise DataError(
            f"class {cls!r} has {n} image(s), too few to split: needs at least {1 + pool_min} "
            f"({need})"
        )
    n_test = min(max(1, _round_half_up(n * cfg.test_fraction)), n - pool_min)
    n_val = 0
    if want_val:
        rest = n - n_test
        n_val = min(max(1, _round_half_up(rest * cfg.val_fraction)), rest - 1)
    return n_test, n_val


def assign_splits(raw: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """One row per image of ``raw`` (columns path, class): split and fold, per SPLIT_COLUMNS."""
    if raw["path"].duplicated().any():
        dup = raw.loc[raw["path"].duplicated(), "path"].tolist()[:5]
        raise DataError(f"raw manifest lists the same path more than once: {dup}")
    rows = []
    for cls, group in sorted(raw.groupby("class", sort=False), key=lambda kv: str(kv[0])):
        paths = np.array(sorted(group["path"]), dtype=object)
        n_test, n_val = split_sizes(len(paths), cfg, str(cls))
        order = _class_rng(cfg.seed, str(cls)).permutation(len(paths))
        shuffled = paths[order]
        for i, path in enumerate(shuffled):
            if i < n_test:
                split, fold = "test", -1
            elif cfg.k_folds:
                fold = (i - n_test) % cfg.k_folds
                split = "val" if fold == cfg.fold else "train"
            else:
                split, fold = ("val" if i < n_test + n_val else "train"), -1
            rows.append({"path": path, "class": cls, "split": split, "fold": fold})
    out = pd.DataFrame(rows, columns=manifest.SPLIT_COLUMNS)
    return out.sort_values("path", kind="stable").reset_index(drop=True)


def assign_predefined(
    raw: pd.DataFrame, predefined: pd.DataFrame, cfg: SplitConfig
) -> pd.DataFrame:
    """The reference study's division: its held-out ("val") fold becomes our test split.

    The study validated and reported on that fold with no separate test set; here it is
    kept as the untouched test split, and the study's training images are divided into
    train / val per class by ``val_fraction`` (seeded as in :func:`assign_splits`).
    """
    held_out = set(predefined.loc[predefined["split"] != "train", "path"])
    unknown = held_out - set(raw["path"])
    if unknown:
        raise DataError(f"predefined split names images not in data/raw: {sorted(unknown)[:5]}")
    rows = []
    for cls, group in sorted(raw.groupby("class", sort=False), key=lambda kv: str(kv[0])):
        pool = np.array(sorted(set(group["path"]) - held_out), dtype=object)
        n_val = max(1, _round_half_up(len(pool) * cfg.val_fraction)) if cfg.val_fraction else 0
        if len(pool) <= n_val:
            raise DataError(f"class {cls!r}: {len(pool)} training image(s) in the predefined split")
        order = _class_rng(cfg.seed, str(cls)).permutation(len(pool))
        for i, path in enumerate(pool[order]):
            rows.append({"path": path, "class": cls, "split": "val" if i < n_val else "train"})
        rows += [{"path": p, "class": cls, "split": "test"} for p in group["path"] if p in held_out]
    out = pd.DataFrame(rows).assign(fold=-1)[manifest.SPLIT_COLUMNS]
    return out.sort_values("path", kind="stable").reset_index(drop=True)


def summary(split: pd.DataFrame) -> str:
    """Counts per class and split, for the log."""
    table = pd.crosstab(split["class"], split["split"]).reindex(
        columns=list(manifest.SPLITS), fill_value=0
    )
    return table.to_string()


def run(params: Params, layout: Layout, args: argparse.Namespace) -> int:
    raw = manifest.read_table(layout.raw_manifest, manifest.RAW_COLUMNS)
    if raw.empty:
        raise DataError(f"{layout.raw_manifest}: no images listed")
    if params.split.predefined:
        if not layout.raw_predefined_split.is_file():
            raise DataError(
                f"split.predefined is true but {layout.raw_predefined_split} does not exist: "
                "only ingest.source=mat ships a predefined split"
            )
        predefined = manifest.read_table(layout.raw_predefined_split, manifest.SPLIT_COLUMNS)
        split = assign_predefined(raw, predefined, params.split)
    else:
        split = assign_splits(raw, params.split)
    manifest.write_table(split, layout.split_csv, manifest.SPLIT_COLUMNS)
    mode = (
        "predefined fold = test"
        if params.split.predefined
        else f"{params.split.k_folds} folds, val = fold {params.split.fold}"
        if params.split.k_folds
        else "one split"
    )
    print(f"split: {len(split)} images -> {layout.split_csv} ({mode})\n{summary(split)}")
    return 0
