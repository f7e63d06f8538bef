"""Synthetic-image quality for the report: FID/KID per class, TSTR, near copies.

Only the synthetic images and the real *training* images are compared for
FID/KID and memorisation (the generator was fit on training images); the real
validation images give the small-sample yardstick (real train vs real val:
what FID/KID look like for two real sets of this size), and the real test split
is used only to score the TSTR / TRTR probes.

First the extractor is validated on the real images alone (:mod:`.extractor_check`);
when it fails, no synthetic-image number is computed and the report says why. When it
passes, :class:`HowFar` puts the synthetic set's distance to the training images in
units of a real set's: FID against the training images of as many synthetic as real
validation images, and each image's distance to its nearest training image. Whatever the
extractor, :mod:`.pixel_match` looks for copies in pixel space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lymphaug.common import manifest
from lymphaug.common.config import Params
from lymphaug.common.errors import DataError
from lymphaug.common.paths import Layout
from lymphaug.comparison import extractor_check, image_metrics, pixel_match, results
from lymphaug.comparison.extractor_check import ExtractorValidation
from lymphaug.comparison.features import Extractor, choose
from lymphaug.comparison.pixel_match import PixelMatch

KID_SUBSETS = 100
SAME_SIZE_SUBSETS = 20  # seeded subsets behind each same-size FID of HowFar
FAR_FACTOR = 3.0  # synthetic FID >= 3x a real set's of the same size: "far from the real images"
CLOSE_FACTOR = 1.5  # <= 1.5x: about as close to the training images as real images are


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
    kid_real_val_std: float | None = None


@dataclass(kw_only=True)
class NearCopy:
    """A synthetic image suspiciously close to a training image (possible memorisation)."""

    synthetic: str
    nearest: str
    distance: float
    same_as_source: bool


@dataclass(frozen=True, kw_only=True)
class HowFar:
    """The synthetic set's distance to the training images in units of a real set's.

    FID is biased upwards by small sets, so both FIDs compare ``size`` images (subsets
    of the synthetic and of the real validation images) with all training images.
    """

    size: int
    fid_synthetic: float
    fid_real: float
    nn_synthetic: float  # median cosine distance of a synthetic image to its nearest training one
    nn_real: float  # the same for the real held-out (validation + test) images

    @property
    def fid_ratio(self) -> float:
        return self.fid_synthetic / self.fid_real if self.fid_real > 0 else float("inf")

    @property
    def nn_ratio(self) -> float:
        return self.nn_synthetic / self.nn_real if self.nn_real > 0 else float("inf")

    @property
    def verdict(self) -> str:
        """far | farther | close, from the FID ratio (the set-level comparison)."""
        if self.fid_ratio >= FAR_FACTOR:
            return "far"
        return "close" if self.fid_ratio <= CLOSE_FACTOR else "farther"


@dataclass(kw_only=True)
class SyntheticMetrics:
    """Every synthetic-image number; only computed with a validated extractor."""

    per_class: list[ClassQuality]
    how_far: HowFar | None  # None: a set with fewer than two images
    tstr_accuracy: float
    distances: pd.DataFrame  # synthetic, class, nearest, distance, flagged
    real_nn_median: float
    threshold: float
    near_copies: list[NearCopy] = field(default_factory=list)
    closest: list[tuple[Path, Path, str]] = field(default_factory=list)  # for the sheet


@dataclass(kw_only=True)
class QualityReport:
    """The extractor, its validation on real images, (when valid) the synthetic metrics, and
    the pixel-space near-copy check, which needs no extractor."""

    extractor: str
    extractor_description: str
    feature_scale: float  # features were divided by this (1.0: raw ImageNet features)
    validation: ExtractorValidation
    n_test: int
    metrics: SyntheticMetrics | None  # None: the extractor failed validation
    pixels: PixelMatch


def _fid_kid(real: np.ndarray, other: np.ndarray, seed: int):
    """(FID, KID, KID std, KID subset size), all None when either set has under two rows."""
    if len(real) < 2 or len(other) < 2:
        return None, None, None, None
    kid, kid_std, subset_size = image_metrics.kid(
        real, other, subsets=KID_SUBSETS, subset_size=min(len(real), len(other)), seed=seed
    )
    return image_metrics.fid(real, other), kid, kid_std, subset_size


def same_size_fid(real: np.ndarray, other: np.ndarray, *, size: int, seed: int) -> float:
    """Mean FID of ``real`` against seeded subsets of ``size`` rows of ``other``."""
    rng = np.random.default_rng(seed)
    return float(
        np.mean(
            [
                image_metrics.fid(real, other[rng.choice(len(other), size, replace=False)])
                for _ in range(SAME_SIZE_SUBSETS)
            ]
        )
    )


def how_far(
    *,
    train: np.ndarray,
    val: np.ndarray,
    synthetic: np.ndarray,
    synthetic_nn: np.ndarray,
    held_out_nn: np.ndarray,
    seed: int,
) -> HowFar | None:
    """Synthetic vs real validation images, as many of each, against the training images.

    ``synthetic_nn``, ``held_out_nn``: each synthetic / real held-out image's distance to
    its nearest training image.
    """
    size = min(len(val), len(synthetic))
    if size < 2 or len(train) < 2 or not len(held_out_nn):
        return None
    return HowFar(
        size=size,
        fid_synthetic=same_size_fid(train, synthetic, size=size, seed=seed),
        fid_real=same_size_fid(train, val, size=size, seed=seed),
        nn_synthetic=float(np.median(synthetic_nn)),
        nn_real=float(np.median(held_out_nn)),
    )


def _extractor_accuracy(layout: Layout, extractor: Extractor, classes: list[str]) -> float | None:
    """The classifier extractor's own test accuracy, recomputed from its predictions."""
    if extractor.name != "classifier" or extractor.seed is None:
        return None
    try:
        return results.read_run(layout, "base", extractor.seed, classes).accuracy
    except DataError:
        return None


def assess(params: Params, layout: Layout, extractor: Extractor | None = None) -> QualityReport:
    """Validate the extractor, then (if valid) compute every quality number.

    Raises DataError when an input is unusable.
    """
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
        f_tr, f_val, f_te = (f / scale for f in (f_tr, f_val, f_te))
    index = {c: i for i, c in enumerate(classes)}
    y_syn = synth["class"].map(index).to_numpy()
    y_tr = by_split["train"]["class"].map(index).to_numpy()
    y_val = by_split["val"]["class"].map(index).to_numpy()
    y_te = by_split["test"]["class"].map(index).to_numpy()

    # the extractor on real images only, before any synthetic image is looked at
    f_held_out = np.concatenate([f_val, f_te])
    held_out_nn = np.array(
        [n.distance for n in image_metrics.nearest_training(f_held_out, f_tr)]
        if len(f_tr) and len(f_held_out)
        else []
    )
    _, kid_rr, _, kid_rr_subset = _fid_kid(f_tr, f_val, cfg.seed)
    kid_rr_floor = (
        None if kid_rr is None else image_metrics.kid_floor(f_tr, f_val, subset_size=kid_rr_subset)
    )
    validation = extractor_check.validate(
        real=np.concatenate([f_tr, f_held_out]),
        held_out_nn=held_out_nn,
        near_copy_threshold=cfg.near_copy_threshold,
        kid_real=None if kid_rr is None else (kid_rr, kid_rr_floor),
        probe_accuracy=image_metrics.probe_accuracy(
            f_tr, y_tr, test_x=f_te, test_y=y_te, n_classes=len(classes)
        ),
        classifier_accuracy=_extractor_accuracy(layout, extractor, classes),
        n_classes=len(classes),
    )
    report = QualityReport(
        extractor=extractor.name,
        extractor_description=extractor.description,
        feature_scale=scale,
        validation=validation,
        n_test=len(y_te),
        metrics=None,
        pixels=pixel_match.measure(
            synthetic=[folder / p for p in synth["path"]],
            training=[layout.raw / p for p in by_split["train"]["path"]],
            held_out=[layout.raw / p for name in ("val", "test") for p in by_split[name]["path"]],
            scale=params.train.scale,
        ),
    )
    if not validation.valid:
        return report
    f_syn = extractor.features([folder / p for p in synth["path"]]) / scale

    rows = []
    for name, syn_mask, train_mask, val_mask in [
        *((c, y_syn == i, y_tr == i, y_val == i) for c, i in index.items()),
        ("all", np.ones(len(y_syn), bool), np.ones(len(y_tr), bool), np.ones(len(y_val), bool)),
    ]:
        fid, kid, kid_std, kid_subset = _fid_kid(f_tr[train_mask], f_syn[syn_mask], cfg.seed)
        fid_real_val, kid_real_val, kid_real_val_std, _ = _fid_kid(
            f_tr[train_mask], f_val[val_mask], cfg.seed
        )
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
                kid_real_val_std=kid_real_val_std,
            )
        )

    tstr = float("nan")
    if len(np.unique(y_syn)) >= 2:
        tstr = image_metrics.probe_accuracy(
            f_syn, y_syn, test_x=f_te, test_y=y_te, n_classes=len(classes)
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
    report.metrics = SyntheticMetrics(
        per_class=rows,
        how_far=how_far(
            train=f_tr,
            val=f_val,
            synthetic=f_syn,
            synthetic_nn=np.array([n.distance for n in neighbours]),
            held_out_nn=held_out_nn,
            seed=cfg.seed,
        ),
        tstr_accuracy=tstr,
        distances=distances,
        real_nn_median=float(np.median(real_nn)),
        threshold=cfg.near_copy_threshold,
        near_copies=near_copies,
        closest=closest,
    )
    return report
