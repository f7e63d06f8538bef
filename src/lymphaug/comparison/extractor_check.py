"""Is the feature extractor fit to judge images? Checked on real images only (pure).

FID, KID, the nearest-training distances and the TSTR probe are only as good as
the features they are computed on. A classifier trained on a few dozen images
maps very different inputs to nearly the same point of its penultimate layer
(its features collapse onto the few directions that separate the classes), and
then coloured noise lands "closer" to a training image than two real images are
to each other. So before any synthetic-image number is computed, the extractor
has to show on real images that it tells images apart. Every rule below must hold;
the thresholds are fixed here (and printed in the report), not tuned per run:

- **features vary**: the centred real features carry at least ``MIN_VARIANCE_FRACTION``
  of the features' mean square (constant features fail, whatever their value);
- **not collapsed**: their effective rank (exp of the entropy of the normalised
  singular-value spectrum, Roy & Vetterli 2007) is at least ``MIN_EFFECTIVE_RANK``:
  features lying along one direction can rank images but not compare them;
- **real images are not near copies of each other**: at most
  ``MAX_HELD_OUT_NEAR_COPIES`` of the real held-out images (validation + test, never
  trained on) lie within ``compare.near_copy_threshold`` of a training image. If
  distinct real images pass as copies, the near-copy test means nothing;
- **real-vs-real KID behaves as for two real sets**: the KID of the real training vs
  real validation images (all classes) lies within ``[KID_FLOOR_LOW, KID_FLOOR_HIGH]``
  times its small-sample error scale F (:func:`image_metrics.kid_floor`: the unbiased
  estimate cannot fall much below -F, and two sets from one distribution scatter around
  0 on that scale). At the floor, the two sets' mean features coincide beyond chance:
  the features hold little more than the class, as a collapsed classifier's do (the
  "-1.21, slightly negative" of issue 15); far above it, the extractor sees training
  and validation images as different kinds of image (a classifier that memorised its
  training set).

The extractor's own classification accuracy is stated beside the checks (the
``base`` classifier's test accuracy when it is the extractor; always the linear
probe's accuracy on the real features) but is not a rule: an ImageNet network
need not know lymphoma subtypes to measure how alike two sets of images are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_VARIANCE_FRACTION = 1e-6
MIN_EFFECTIVE_RANK = 2.0
MAX_HELD_OUT_NEAR_COPIES = 0.10
KID_FLOOR_LOW = -0.8
KID_FLOOR_HIGH = 3.0


@dataclass(frozen=True, kw_only=True)
class Check:
    """One rule of the validation, with the measured value, as the report prints it."""

    name: str
    measured: str
    rule: str
    passed: bool


@dataclass(frozen=True, kw_only=True)
class ExtractorValidation:
    """The verdict on the extractor; synthetic-image metrics are computed only when valid."""

    checks: list[Check]
    probe_accuracy: float  # linear probe trained on real train features, scored on real test
    classifier_accuracy: float | None  # the extractor's own test accuracy (classifier only)
    n_classes: int

    @property
    def valid(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]


def variance_fraction(features: np.ndarray) -> float:
    """Mean squared norm of the centred rows over that of the raw rows (0: constant)."""
    x = np.asarray(features, np.float64)
    total = float(np.mean(np.sum(x * x, axis=1)))
    if total == 0.0:
        return 0.0
    centred = x - x.mean(0)
    return float(np.mean(np.sum(centred * centred, axis=1))) / total


def effective_rank(features: np.ndarray) -> float:
    """exp(entropy) of the centred rows' normalised squared singular values (0: constant)."""
    x = np.asarray(features, np.float64)
    energy = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    if energy.sum() <= 0.0:
        return 0.0
    p = energy / energy.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def validate(
    *,
    real: np.ndarray,
    held_out_nn: np.ndarray,
    near_copy_threshold: float,
    kid_real: tuple[float, float] | None,
    probe_accuracy: float,
    classifier_accuracy: float | None,
    n_classes: int,
) -> ExtractorValidation:
    """Apply the module's rules to the real images' features.

    ``real``: every real image's features (train, validation and test); ``held_out_nn``:
    each held-out real image's cosine distance to its nearest training image;
    ``kid_real``: (KID, its error scale F) of real train vs real validation, None when
    either set has under two images (then the rule cannot be checked and fails).
    """
    var = variance_fraction(real)
    rank = effective_rank(real) if var >= MIN_VARIANCE_FRACTION else 0.0
    near = float(np.mean(held_out_nn < near_copy_threshold)) if len(held_out_nn) else 1.0
    checks = [
        Check(
            name="features vary",
            measured=f"centred variance {var:.3g} of the mean square",
            rule=f">= {MIN_VARIANCE_FRACTION:g}",
            passed=var >= MIN_VARIANCE_FRACTION,
        ),
        Check(
            name="features not collapsed",
            measured=f"effective rank {rank:.2f}",
            rule=f">= {MIN_EFFECTIVE_RANK:g}",
            passed=rank >= MIN_EFFECTIVE_RANK,
        ),
        Check(
            name="real images are not near copies of each other",
            measured=(
                f"{100 * near:.0f}% of {len(held_out_nn)} held-out real images within "
                f"{near_copy_threshold:g} of a training image (median distance "
                f"{float(np.median(held_out_nn)) if len(held_out_nn) else float('nan'):.3g})"
            ),
            rule=f"<= {100 * MAX_HELD_OUT_NEAR_COPIES:.0f}%",
            passed=near <= MAX_HELD_OUT_NEAR_COPIES,
        ),
    ]
    rule = f"within [{KID_FLOOR_LOW:g}, {KID_FLOOR_HIGH:g}] x F"
    name = "real-vs-real KID as for two real sets"
    if kid_real is None:
        checks.append(
            Check(
                name=name,
                measured="not measurable (fewer than two training or validation images)",
                rule=rule,
                passed=False,
            )
        )
    else:
        kid, floor = kid_real
        ratio = kid / floor if floor > 0 else float("nan")
        checks.append(
            Check(
                name=name,
                measured=f"KID {kid:.3g} = {ratio:.2f} x its error scale F = {floor:.3g} "
                "(training vs validation images)",
                rule=rule,
                passed=bool(np.isfinite(ratio)) and KID_FLOOR_LOW <= ratio <= KID_FLOOR_HIGH,
            )
        )
    return ExtractorValidation(
        checks=checks,
        probe_accuracy=probe_accuracy,
        classifier_accuracy=classifier_accuracy,
        n_classes=n_classes,
    )
