"""FID, KID, memorisation and the TSTR probe on known feature sets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from lymphaug.comparison import image_metrics


def _fid_reference(x, y):
    """The textbook formula with a dense matrix square root."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_dense_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = rng.normal(0.5, 1.5, size=(30, 6))
    assert image_metrics.fid(x, y) == pytest.approx(_fid_reference(x, y), rel=1e-6)


def test_fid_rank_deficient_high_dimension_matches():
    """12 images in 50 dimensions: singular covariances, still exact."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 50))
    y = rng.normal(0.2, 1.0, size=(10, 50))
    assert image_metrics.fid(x, y) == pytest.approx(_fid_reference(x, y), rel=1e-5)


def test_fid_of_a_set_against_itself_is_zero():
    x = np.random.default_rng(2).normal(size=(15, 4096)).astype(np.float32)
    assert image_metrics.fid(x, x) == pytest.approx(0.0, abs=1e-6 * image_metrics.fid(x, x + 1.0))


def test_kid_unbiased_near_zero_on_identical_distributions():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 32))
    y = rng.normal(size=(60, 32))
    shifted = rng.normal(1.0, 1.0, size=(60, 32))
    same, _, m = image_metrics.kid(x, y, subsets=50, subset_size=20, seed=0)
    diff, _, _ = image_metrics.kid(x, shifted, subsets=50, subset_size=20, seed=0)
    assert m == 20
    assert abs(same) < 0.1 * diff
    # the subset size never exceeds the smaller set
    assert image_metrics.kid(x[:7], y, subsets=5, subset_size=1000)[2] == 7
    # deterministic for a seed
    assert image_metrics.kid(x, y, subsets=10, subset_size=20, seed=1) == image_metrics.kid(
        x, y, subsets=10, subset_size=20, seed=1
    )


def test_kid_can_be_negative():
    """An unbiased estimator of a zero MMD takes both signs."""
    rng = np.random.default_rng(4)
    signs = {
        np.sign(
            image_metrics.kid(
                rng.normal(size=(10, 8)),
                rng.normal(size=(10, 8)),
                subsets=3,
                subset_size=10,
                seed=s,
            )[0]
        )
        for s in range(30)
    }
    assert signs == {-1.0, 1.0}


def test_nearest_training_flags_a_copy():
    rng = np.random.default_rng(5)
    train = rng.normal(size=(20, 64))
    synth = np.vstack([train[7] * 1.0001, rng.normal(size=(3, 64))])
    nn = image_metrics.nearest_training(synth, train)
    assert nn[0].index == 7 and nn[0].distance < 1e-6
    assert all(n.distance > 0.3 for n in nn[1:])
    loo = image_metrics.real_nn_distances(train)
    assert loo.shape == (20,) and loo.min() > 0.3


def test_probe_learns_separable_classes_and_is_deterministic():
    rng = np.random.default_rng(6)
    centres = rng.normal(0, 3, size=(3, 16))
    y = np.repeat(np.arange(3), 15)
    x = centres[y] + rng.normal(size=(45, 16))
    yt = np.repeat(np.arange(3), 10)
    xt = centres[yt] + rng.normal(size=(30, 16))
    acc = image_metrics.probe_accuracy(x, y, test_x=xt, test_y=yt, n_classes=3)
    assert acc >= 0.9
    assert acc == image_metrics.probe_accuracy(x, y, test_x=xt, test_y=yt, n_classes=3)
    # labels carrying no information: chance level, not perfect
    noise = image_metrics.probe_accuracy(
        rng.normal(size=(45, 16)), y, test_x=xt, test_y=yt, n_classes=3
    )
    assert noise < 0.8
