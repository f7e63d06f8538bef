"""``split`` stage: stratified, seeded train / val / test assignment of every raw image,
one file per fold (``data/splits/fold_<f>.csv``).

Why per class and seeded per class: every class must be represented in every split
(a 3-class problem with no MCL test image cannot be evaluated), and the assignment of
one class must not change when another class gains or loses an image. Each class is
shuffled by its own generator, seeded from ``(split.seed, crc32(class name))``, over
its paths in sorted order, so the result depends only on the seed and the set of
paths, never on the manifest's row order.

``k_folds: 0`` (one split, written as fold 0): per class of ``n`` images
``n_test = round(n * test_fraction)``, then ``n_val = round((n - n_test) * val_fraction)``,
each raised to at least 1 (and kept small enough that at least one training image
remains). A class too small for that is an error, not a silently empty split.

``k_folds: k >= 2`` (cross-validation over every image): each class's shuffled images
are dealt round-robin into k folds (stratified); fold f's own images are fold f's TEST
set, validation is drawn from the other folds' images by ``val_fraction`` (per class,
seeded by ``(seed, class, f)``) and the rest trains. Every image is tested exactly once
across the folds. Why one file per fold: a per-fold stage depends on its fold's file
only, so DVC reruns only the folds whose assignment changed.

The ``fold`` column of fold f's file is f: the file says which assignment it is.
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np
import pandas as pd

from lymphaug.common import manifest
from lymphaug.common.config import Params, SplitConfig
from lymphaug.common.errors import DataError
from lymphaug.common.files import atomic_path
from lymphaug.common.paths import Layout


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _class_rng(seed: int, cls: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(cls.encode())])


def split_sizes(n: int, cfg: SplitConfig, cls: str = "?") -> tuple[int, int]:
    """Number of test and val images for a class of ``n`` in the one split (k_folds 0).

    Raises DataError naming the class when ``n`` cannot give every split an image.
    """
    want_val = cfg.val_fraction > 0
    pool_min = 1 + int(want_val)  # train (+ val)
    if n < 1 + pool_min:
        need = "1 test + 1 val + 1 train" if want_val else "1 test + 1 train"
        raise DataError(
            f"class {cls!r} has {n} image(s), too few to split: needs at least {1 + pool_min} "
            f"({need})"
        )
    n_test = min(max(1, _round_half_up(n * cfg.test_fraction)), n - pool_min)
    return n_test, _val_size(n - n_test, cfg.val_fraction)


def _val_size(pool: int, val_fraction: float) -> int:
    """Validation images from a class's ``pool`` of non-test images: at least one, and at
    least one left to train (0 when val_fraction is 0)."""
    if not val_fraction:
        return 0
    return min(max(1, _round_half_up(pool * val_fraction)), pool - 1)


def _check_k_folds(raw: pd.DataFrame, cfg: SplitConfig) -> None:
    """k folds need k images in every class (one test image per fold), and each fold's
    remaining images must still give validation and training one each."""
    counts = raw.groupby("class")["path"].count()
    smallest, n = str(counts.idxmin()), int(counts.min())
    if cfg.k_folds > n:
        raise DataError(
            f"split.k_folds = {cfg.k_folds} is larger than the smallest class ({smallest!r}: "
            f"{n} image(s)): every fold needs a test image of every class; use at most {n} folds"
        )
    pool = n - -(-n // cfg.k_folds)  # the smallest class's non-test images in its fullest fold
    if pool < 1 + int(cfg.val_fraction > 0):
        raise DataError(
            f"class {smallest!r} has {n} image(s): with split.k_folds = {cfg.k_folds} a fold "
            "keeps too few to both validate and train; use fewer folds"
        )


def _rows(cls: str, paths, split: str, fold: int) -> list[dict]:
    return [{"path": p, "class": cls, "split": split, "fold": fold} for p in paths]


def _table(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=manifest.SPLIT_COLUMNS)
    return out.sort_values("path", kind="stable").reset_index(drop=True)


def _by_class(raw: pd.DataFrame):
    """(class, its paths sorted) in class-name order: the order every split is drawn in."""
    for cls, group in sorted(raw.groupby("class", sort=False), key=lambda kv: str(kv[0])):
        yield str(cls), np.array(sorted(group["path"]), dtype=object)


def _check_unique(raw: pd.DataFrame) -> None:
    if raw["path"].duplicated().any():
        dup = raw.loc[raw["path"].duplicated(), "path"].tolist()[:5]
        raise DataError(f"raw manifest lists the same path more than once: {dup}")


def assign_splits(raw: pd.DataFrame, cfg: SplitConfig) -> list[pd.DataFrame]:
    """Every fold's assignment of ``raw``'s images (columns path, class), per SPLIT_COLUMNS:
    ``cfg.n_folds`` tables, index = fold."""
    _check_unique(raw)
    if cfg.k_folds:
        _check_k_folds(raw, cfg)
        return [_fold_table(raw, cfg, fold) for fold in range(cfg.k_folds)]
    rows = []
    for cls, paths in _by_class(raw):
        n_test, n_val = split_sizes(len(paths), cfg, cls)
        shuffled = paths[_class_rng(cfg.seed, cls).permutation(len(paths))]
        rows += _rows(cls, shuffled[:n_test], "test", 0)
        rows += _rows(cls, shuffled[n_test : n_test + n_val], "val", 0)
        rows += _rows(cls, shuffled[n_test + n_val :], "train", 0)
    return [_table(rows)]


def _fold_table(raw: pd.DataFrame, cfg: SplitConfig, fold: int) -> pd.DataFrame:
    """Fold ``fold`` of k: its own images test, validation drawn from the rest, rest trains."""
    rows = []
    for cls, paths in _by_class(raw):
        shuffled = paths[_class_rng(cfg.seed, cls).permutation(len(paths))]
        held_out = np.arange(len(shuffled)) % cfg.k_folds == fold
        rows += _rows(cls, shuffled[held_out], "test", fold)
        rows += _train_val_rows(cls, shuffled[~held_out], cfg, fold)
    return _table(rows)


def _train_val_rows(cls: str, pool, cfg: SplitConfig, fold: int) -> list[dict]:
    """A class's non-test images of one fold, divided into val and train (stratified by
    being per class; seeded per class and fold, in sorted order: row order never matters)."""
    pool = np.array(sorted(pool), dtype=object)
    n_val = _val_size(len(pool), cfg.val_fraction)
    rng = np.random.default_rng([cfg.seed, zlib.crc32(cls.encode()), fold])
    pool = pool[rng.permutation(len(pool))]
    return _rows(cls, pool[:n_val], "val", fold) + _rows(cls, pool[n_val:], "train", fold)


def assign_predefined(
    raw: pd.DataFrame, predefined: pd.DataFrame, cfg: SplitConfig, *, mat_fold: int
) -> list[pd.DataFrame]:
    """The benchmark's own folds: each held-out ("val") part is that fold's test split.

    The study validated and reported on its held-out fold with no separate test set; here
    it is kept as the untouched test split, and the fold's training images are divided
    into train / val per class by ``val_fraction``. ``k_folds: 0`` uses the benchmark's
    fold ``mat_fold`` (``ingest.mat.fold``, 1-based) as fold 0, as the study did;
    ``k_folds: k`` uses all of its folds, and k must be their number.
    """
    _check_unique(raw)
    available = sorted(int(f) for f in predefined["fold"].unique())
    if cfg.k_folds and cfg.k_folds != len(available):
        raise DataError(
            f"split.k_folds = {cfg.k_folds} but the benchmark's predefined division has "
            f"{len(available)} folds: set split.k_folds to {len(available)} (or 0 for one)"
        )
    chosen = available if cfg.k_folds else [mat_fold - 1]
    if chosen[0] not in available:
        raise DataError(
            f"ingest.mat.fold = {mat_fold} is not among the predefined folds 1..{len(available)}"
        )
    return [
        _predefined_fold(raw, predefined[predefined["fold"] == source], cfg, fold)
        for fold, source in enumerate(chosen)
    ]


def _predefined_fold(
    raw: pd.DataFrame, predefined: pd.DataFrame, cfg: SplitConfig, fold: int
) -> pd.DataFrame:
    held_out = set(predefined.loc[predefined["split"] != "train", "path"])
    unknown = held_out - set(raw["path"])
    if unknown:
        raise DataError(f"predefined split names images not in data/raw: {sorted(unknown)[:5]}")
    rows = []
    for cls, paths in _by_class(raw):
        pool = sorted(set(paths) - held_out)
        if len(pool) <= _val_size(len(pool), cfg.val_fraction) or not pool:
            raise DataError(f"class {cls!r}: {len(pool)} training image(s) in the predefined split")
        rows += _train_val_rows(cls, pool, cfg, fold)
        rows += _rows(cls, [p for p in paths if p in held_out], "test", fold)
    return _table(rows)


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
    cfg = params.split
    if cfg.predefined:
        if not layout.raw_predefined_split.is_file():
            raise DataError(
                f"split.predefined is true but {layout.raw_predefined_split} does not exist: "
                "only ingest.source=mat ships a predefined split"
            )
        predefined = manifest.read_table(layout.raw_predefined_split, manifest.SPLIT_COLUMNS)
        folds = assign_predefined(raw, predefined, cfg, mat_fold=params.ingest.mat.fold)
    else:
        folds = assign_splits(raw, cfg)
    # the whole folder at once: a fold that no longer exists (fewer k_folds) goes with it
    with atomic_path(layout.splits) as tmp:
        tmp.mkdir(parents=True)
        for fold, table in enumerate(folds):
            target = tmp / layout.for_fold(fold).split_csv.name
            manifest.write_table(table, target, manifest.SPLIT_COLUMNS)
    mode = (
        f"the benchmark's predefined fold(s), {len(folds)}"
        if cfg.predefined
        else f"{cfg.k_folds} folds, fold f's own images = its test set"
        if cfg.k_folds
        else "one split, fold 0"
    )
    print(f"split: {len(raw)} images -> {layout.splits} ({mode})")
    for fold, table in enumerate(folds):
        print(f"fold {fold} ({layout.for_fold(fold).split_csv}):\n{summary(table)}")
    return 0
