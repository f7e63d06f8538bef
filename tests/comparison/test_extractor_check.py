"""The extractor's rules on feature matrices with known structure (pure, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from lymphaug.comparison import extractor_check, image_metrics


def test_effective_rank_counts_the_directions_features_use():
    rng = np.random.default_rng(0)
    assert extractor_check.effective_rank(np.ones((20, 8))) == 0.0
    line = np.outer(rng.normal(size=50), rng.normal(size=8))  # one direction
    assert extractor_check.effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    iso = rng.normal(size=(2000, 8))
    assert extractor_check.effective_rank(iso) == pytest.approx(8.0, rel=0.02)
    assert extractor_check.variance_fraction(np.full((5, 3), 2.0)) == 0.0


def _validate(features, held_out_nn, kid):
    return extractor_check.validate(
        real=features,
        held_out_nn=np.asarray(held_out_nn, float),
        near_copy_threshold=0.05,
        kid_real=kid,
        probe_accuracy=0.9,
        classifier_accuracy=None,
        n_classes=3,
    )


def test_each_rule_fails_on_its_own():
    rng = np.random.default_rng(0)
    good = rng.normal(size=(40, 16))
    far = [0.3] * 10
    assert _validate(good, far, (0.0, 1.0)).valid
    fails = {
        "features vary": _validate(np.ones((40, 16)), far, (0.0, 1.0)),
        "real images are not near copies of each other": _validate(good, [0.01] * 10, (0.0, 1.0)),
        "real-vs-real KID as for two real sets": _validate(good, far, (-0.95, 1.0)),
    }
    for name, validation in fails.items():
        assert not validation.valid and name in [c.name for c in validation.failures]
    assert not _validate(good, far, (3.5, 1.0)).valid  # train and val look like two kinds
    assert not _validate(good, far, None).valid  # not measurable is not a pass


def test_kid_floor_bounds_the_unbiased_estimate():
    """Two identical tight clusters, balanced: the unbiased KID sits at about -F."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    x = np.repeat(centres, 4, axis=0) + 0.01 * rng.normal(size=(12, 16))
    y = np.repeat(centres, 2, axis=0) + 0.01 * rng.normal(size=(6, 16))
    kid, _, m = image_metrics.kid(x, y, subsets=50, subset_size=6, seed=0)
    floor = image_metrics.kid_floor(x, y, subset_size=m)
    assert floor > 0 and -1.05 * floor < kid < -0.5 * floor
