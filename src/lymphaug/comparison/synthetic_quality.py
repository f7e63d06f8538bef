"""Synthetic-image quality for the report: FID/KID per class, TSTR, near copies.

Only the synthetic images and the real *training* images are compared for
FID/KID and memorisation (the generator was fit on training images); the real
validation images give the small-sample yardstick (real train vs real val:
what FID/KID look like for two real sets of this size), and the real test split
is used only to score the TSTR / TRTR probes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lymphaug.common import manifest
from lymphaug.common.config import Params
from lymphaug.common.paths import Layout
from lymphaug.comparison import image_metrics
from lymphaug.comparison.features import Extractor, choose

KID_SUBSETS = 100


@dataclass(kw_only=True)
class ClassQuality:
    """One row of the report's FID/KID table, with the real-vs-real yardstick beside it."""

    name: str  # a class, or "all"
    n_real: int
    n_synthetic: int
    fid: float | None
    kid: float | None
    kid_std: float | None
    kid_subset: int | None
    fid_real_val: float | None  # yardstick: real train vs real val
    kid_real_val: float | None


@dataclass(kw_only=True)
class NearCopy:
    """A synthetic image suspiciously close to a training image (possible memorisation)."""

    synthetic: str
    nearest: str
    distance: float
    same_as_source: bool


@dataclass(kw_only=True)
class QualityReport:
    """Every synthetic-quality number of the report and metrics.json, computed once."""

    extractor: str
    extractor_description: str
    feature_scale: float  # features were divided by this (1.0: raw ImageNet features)
    per_class: list[ClassQuality]
    tstr_accuracy: float
    trtr_accuracy: float
    n_test: int
    distances: pd.DataFrame  # synthetic, class, nearest, distance, flagged
    real_nn_median: float
    threshold: float
    near_copies: list[NearCopy] = field(default_factory=list)
    closest: list[tuple[Path, Path, str]] = field(default_factory=list)  # for the sheet


def _fid_kid(real: np.ndarray, other: np.ndarray, seed: int):
    """(FID, KID, KID std, KID subset size), all None when either set has under two rows."""
    if len(real) < 2 or len(other) < 2:
        return None, None, None, None
    kid, kid_std, subset_size = image_metrics.kid(
        real, other, subsets=KID_SUBSETS, subset_size=min(len(real), len(other)), seed=seed
    )
    return image_metrics.fid(real, other), kid, kid_std, subset_size


def assess(params: Params, layout: Layout, extractor: Extractor | None = None) -> QualityReport:
    """Compute every quality number; raises DataError when an input is unusable."""
    cfg = params.compare
    classes = list(params.classes)
    folder = layout.synthetic_training_dir(params.train.synthetic_dir)
    synth = manifest.read_table(folder / "manifest.csv", manifest.SYNTHETIC_COLUMNS)
    split = manifest.read_table(layout.split_csv, manifest.SPLIT_COLUMNS)
    manifest.assert_train_only([s for s in synth["source"] if s], split, "compare (TSTR probe)")
    synth = synth[synth["class"].isin(classes)].sort_values("path").reset_index(drop=True)
    by_split = {
        name: split[split["split"] == name].sort_values("path").reset_index(drop=True)
        for name in manifest.SPLITS
    }
    if extractor is None:
        train_cfg = params.train
        extractor = choose(
            cfg.feature_extractor,
            layout,
            train_cfg=train_cfg,
            n_classes=len(classes),
            seed=train_cfg.seeds[0],
        )
    # f_*: feature matrices (one row per image); y_*: class indices
    f_syn = extractor.features([folder / p for p in synth["path"]])
    f_tr = extractor.features([layout.raw / p for p in by_split["train"]["path"]])
    f_val = extractor.features([layout.raw / p for p in by_split["val"]["path"]])
    f_te = extractor.features([layout.raw / p for p in by_split["test"]["path"]])
    scale = 1.0
    if extractor.name == "classifier" and len(f_tr) >= 2:
        # A trained-from-scratch or random-init body has no conventional feature scale
        # (its features can be ~1e-6 or ~1e3): one scalar, the root-mean-square of the real
        # training features, brings them to x.x/d = 1 on average, so KID's kernel
        # (x.y/d + 1)^3 sees O(1) inputs and FID is in those units. Geometry (and the
        # cosine distances) are unchanged.
        scale = float(np.sqrt(np.mean(f_tr**2))) or 1.0
        f_syn, f_tr, f_val, f_te = (f / scale for f in (f_syn, f_tr, f_val, f_te))
    index = {c: i for i, c in enumerate(classes)}
    y_syn = synth["class"].map(index).to_numpy()
    y_tr = by_split["train"]["class"].map(index).to_numpy()
    y_val = by_split["val"]["class"].map(index).to_numpy()
    y_te = by_split["test"]["class"].map(index).to_numpy()

    rows = []
    for name, syn_mask, train_mask, val_mask in [
        *((c, y_syn == i, y_tr == i, y_val == i) for c, i in index.items()),
        ("all", np.ones(len(y_syn), bool), np.ones(len(y_tr), bool), np.ones(len(y_val), bool)),
    ]:
        fid, kid, kid_std, kid_subset = _fid_kid(f_tr[train_mask], f_syn[syn_mask], cfg.seed)
        fid_real_val, kid_real_val, _, _ = _fid_kid(f_tr[train_mask], f_val[val_mask], cfg.seed)
        rows.append(
            ClassQuality(
                name=name,
                n_real=int(train_mask.sum()),
                n_synthetic=int(syn_mask.sum()),
                fid=fid,
                kid=kid,
                kid_std=kid_std,
                kid_subset=kid_subset,
                fid_real_val=fid_real_val,
                kid_real_val=kid_real_val,
            )
        )

    tstr = trtr = float("nan")
    if len(np.unique(y_syn)) >= 2:
        tstr = image_metrics.probe_accuracy(
            f_syn, y_syn, test_x=f_te, test_y=y_te, n_classes=len(classes)
        )
    trtr = image_metrics.probe_accuracy(
        f_tr, y_tr, test_x=f_te, test_y=y_te, n_classes=len(classes)
    )

    neighbours = image_metrics.nearest_training(f_syn, f_tr) if len(f_syn) else []
    train_paths = list(by_split["train"]["path"])
    distances = pd.DataFrame(
        {
            "synthetic": list(synth["path"]),
            "class": list(synth["class"]),
            "nearest_training": [train_paths[n.index] for n in neighbours],
            "cosine_distance": [round(n.distance, 6) for n in neighbours],
        }
    )
    distances["near_copy"] = distances["cosine_distance"] < cfg.near_copy_threshold
    near_copies = [
        NearCopy(
            synthetic=row.synthetic,
            nearest=row.nearest_training,
            distance=row.cosine_distance,
            same_as_source=source == row.nearest_training,
        )
        for row, source in zip(distances.itertuples(), synth["source"], strict=True)
        if row.near_copy
    ]
    closest_rows = distances.sort_values(["cosine_distance", "synthetic"]).head(6)
    closest = [
        (
            folder / row.synthetic,
            layout.raw / row.nearest_training,
            f"{row.synthetic} (d={row.cosine_distance:.3f})",
        )
        for row in closest_rows.itertuples()
    ]
    real_nn = image_metrics.real_nn_distances(f_tr) if len(f_tr) >= 2 else np.array([np.nan])
    return QualityReport(
        extractor=extractor.name,
        extractor_description=extractor.description,
        feature_scale=scale,
        per_class=rows,
        tstr_accuracy=tstr,
        trtr_accuracy=trtr,
        n_test=len(y_te),
        distances=distances,
        real_nn_median=float(np.median(real_nn)),
        threshold=cfg.near_copy_threshold,
        near_copies=near_copies,
        closest=closest,
    )
