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


@dataclass
class ClassQuality:
    name: str  # a class, or "all"
    n_real: int
    n_synthetic: int
    fid: float | None
    kid: float | None
    kid_std: float | None
    kid_subset: int | None
    fid_real_val: float | None  # yardstick: real train vs real val
    kid_real_val: float | None


@dataclass
class NearCopy:
    synthetic: str
    nearest: str
    distance: float
    same_as_source: bool


@dataclass
class QualityReport:
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


def _fid_kid(a: np.ndarray, b: np.ndarray, seed: int):
    if len(a) < 2 or len(b) < 2:
        return None, None, None, None
    k, ks, m = image_metrics.kid(a, b, KID_SUBSETS, min(len(a), len(b)), seed)
    return image_metrics.fid(a, b), k, ks, m


def assess(params: Params, layout: Layout, extractor: Extractor | None = None) -> QualityReport:
    """Compute every quality number; raises DataError when an input is unusable."""
    cfg = params.compare
    classes = list(params.classes)
    folder = layout.synthetic_training_dir(params.train.synthetic_dir)
    synth = manifest.read_table(folder / "manifest.csv", manifest.SYNTHETIC_COLUMNS)
    split = manifest.read_table(layout.split_csv, manifest.SPLIT_COLUMNS)
    manifest.assert_train_only([s for s in synth["source"] if s], split, "compare (TSTR probe)")
    synth = synth[synth["class"].isin(classes)].sort_values("path").reset_index(drop=True)
    by = {
        s: split[split["split"] == s].sort_values("path").reset_index(drop=True)
        for s in manifest.SPLITS
    }
    if extractor is None:
        t = params.train
        extractor = choose(
            cfg.feature_extractor, layout, t.arch, t.input_size, len(classes), t.seeds[0]
        )
    f_syn = extractor.features([folder / p for p in synth["path"]])
    f_tr = extractor.features([layout.raw / p for p in by["train"]["path"]])
    f_val = extractor.features([layout.raw / p for p in by["val"]["path"]])
    f_te = extractor.features([layout.raw / p for p in by["test"]["path"]])
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
    y_tr = by["train"]["class"].map(index).to_numpy()
    y_val = by["val"]["class"].map(index).to_numpy()
    y_te = by["test"]["class"].map(index).to_numpy()

    rows = []
    for name, ms, mt, mv in [
        *((c, y_syn == i, y_tr == i, y_val == i) for c, i in index.items()),
        ("all", np.ones(len(y_syn), bool), np.ones(len(y_tr), bool), np.ones(len(y_val), bool)),
    ]:
        fid, kid, kid_std, m = _fid_kid(f_tr[mt], f_syn[ms], cfg.seed)
        fid_rv, kid_rv, _, _ = _fid_kid(f_tr[mt], f_val[mv], cfg.seed)
        rows.append(
            ClassQuality(name, int(mt.sum()), int(ms.sum()), fid, kid, kid_std, m, fid_rv, kid_rv)
        )

    tstr = trtr = float("nan")
    if len(np.unique(y_syn)) >= 2:
        tstr = image_metrics.probe_accuracy(f_syn, y_syn, f_te, y_te, len(classes))
    trtr = image_metrics.probe_accuracy(f_tr, y_tr, f_te, y_te, len(classes))

    nn = image_metrics.nearest_training(f_syn, f_tr) if len(f_syn) else []
    train_paths = list(by["train"]["path"])
    dist = pd.DataFrame(
        {
            "synthetic": list(synth["path"]),
            "class": list(synth["class"]),
            "nearest_training": [train_paths[n.index] for n in nn],
            "cosine_distance": [round(n.distance, 6) for n in nn],
        }
    )
    dist["near_copy"] = dist["cosine_distance"] < cfg.near_copy_threshold
    near = [
        NearCopy(r.synthetic, r.nearest_training, r.cosine_distance, src == r.nearest_training)
        for r, src in zip(dist.itertuples(), synth["source"], strict=True)
        if r.near_copy
    ]
    order = dist.sort_values(["cosine_distance", "synthetic"]).head(6)
    closest = [
        (
            folder / r.synthetic,
            layout.raw / r.nearest_training,
            f"{r.synthetic} (d={r.cosine_distance:.3f})",
        )
        for r in order.itertuples()
    ]
    loo = image_metrics.real_nn_distances(f_tr) if len(f_tr) >= 2 else np.array([np.nan])
    return QualityReport(
        extractor.name,
        extractor.description,
        scale,
        rows,
        tstr,
        trtr,
        len(y_te),
        dist,
        float(np.median(loo)),
        cfg.near_copy_threshold,
        near,
        closest,
    )
