"""The comparison statistics against scipy and hand-computed values on known inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as ss

from lymphaug.comparison import stats


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    v = np.array([0.61, 0.72, 0.66, 0.70, 0.58])
    a = stats.bootstrap_ci(v, resamples=2000, alpha=0.05, seed=3)
    b = stats.bootstrap_ci(v, resamples=2000, alpha=0.05, seed=3)
    c = stats.bootstrap_ci(v, resamples=2000, alpha=0.05, seed=4)
    assert a == b and a != c
    assert a[0] < v.mean() < a[1]
    assert v.min() <= a[0] and a[1] <= v.max()


def test_bootstrap_ci_single_value_collapses():
    assert stats.bootstrap_ci(np.array([0.5]), resamples=100, alpha=0.05, seed=0) == (0.5, 0.5)
    s = stats.summarise(np.array([0.5]), resamples=100, alpha=0.05, seed=0)
    assert s.n == 1 and math.isnan(s.std)


def test_summary_std_is_sample_std():
    s = stats.summarise(np.array([1.0, 2.0, 3.0, 4.0]), resamples=500, alpha=0.05, seed=0)
    assert s.mean == 2.5 and s.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))


def test_paired_t_matches_scipy_and_degenerate_cases():
    a = np.array([0.60, 0.65, 0.70, 0.62])
    b = np.array([0.66, 0.64, 0.75, 0.70])
    r = stats.paired_t(a, b)
    assert r.p == pytest.approx(ss.ttest_rel(b, a).pvalue)
    assert stats.paired_t(a, a).p == 1.0
    assert stats.paired_t(a, a + 0.1).p is None  # constant non-zero difference
    assert stats.paired_t(a[:1], b[:1]).p is None


def _exact_pratt(d):
    """Hand enumeration: Pratt ranks, drop zeros, flip signs of the rest."""
    ranks = ss.rankdata(np.abs(d))
    r = ranks[d != 0]
    observed = min(r[d[d != 0] > 0].sum(), r[d[d != 0] < 0].sum())
    count = 0
    for signs in itertools.product([0, 1], repeat=len(r)):
        rp = sum(ri for ri, s in zip(r, signs, strict=True) if s)
        if min(rp, r.sum() - rp) <= observed + 1e-12:
            count += 1
    return count / 2 ** len(r)


def test_wilcoxon_zero_and_tied_differences_hand_computed():
    # |d| ranks with the zero: 0->1, 0.02->2, 0.05,0.05->3.5,3.5, 0.1->5; zero dropped.
    # r- = 2 (for -0.02); over the 16 sign flips of {2, 3.5, 3.5, 5}, min(r+, r-) <= 2
    # happens 4 times (r- in {0, 2} or r+ in {0, 2}): p = 4/16.
    a = np.zeros(5)
    b = np.array([0.0, 0.05, 0.05, -0.02, 0.1])
    r = stats.wilcoxon(a, b)
    assert r.p == pytest.approx(0.25)
    assert r.p == pytest.approx(_exact_pratt(b))
    assert "zero difference" in r.note and "tied" in r.note and "pratt" in r.method
    assert "cannot be significant" in r.note  # 4 non-zero pairs: min p = 0.125


def test_wilcoxon_without_ties_matches_scipy_exact():
    rng = np.random.default_rng(0)
    a = rng.normal(size=8)
    b = a + rng.normal(0.5, 1.0, size=8)
    r = stats.wilcoxon(a, b)
    assert r.p == pytest.approx(ss.wilcoxon(b - a, method="exact").pvalue)
    assert r.note == ""


def test_wilcoxon_degenerate_and_power_limit():
    a = np.array([0.5, 0.6, 0.7])
    assert stats.wilcoxon(a, a).p == 1.0
    assert stats.wilcoxon(a[:1], a[:1] + 0.1).p is None
    assert stats.wilcoxon_min_p(5) == pytest.approx(0.0625)
    assert stats.wilcoxon_min_p(6) == pytest.approx(0.03125)
    # six positive differences reach the minimum exactly
    r = stats.wilcoxon(np.zeros(6), np.arange(1, 7) / 10)
    assert r.p == pytest.approx(0.03125) and r.note == ""


def test_wilcoxon_large_n_uses_normal_approximation():
    rng = np.random.default_rng(1)
    d = rng.normal(0.1, 1, size=30)
    r = stats.wilcoxon(np.zeros(30), d)
    assert "normal approximation" in r.method
    assert r.p == pytest.approx(ss.wilcoxon(d, zero_method="pratt", method="approx").pvalue)


def test_mcnemar_discordant_counts_and_exact_p():
    #            pair: 0  1  2  3  4  5  6  7  8  9
    a = np.array([1, 1, 1, 0, 0, 1, 0, 1, 1, 0], bool)
    b = np.array([1, 0, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    assert stats.discordant_counts(a, b) == (2, 3)  # b: pairs 1, 8; c: pairs 3, 4, 6
    m = stats.mcnemar(a, b)
    # exact two-sided binomial: P(X <= 2 | n=5, 1/2) * 2 = 2 * 16/32 = 1.0
    assert m.method == "exact binomial" and m.p == pytest.approx(1.0)
    assert m.odds_ratio == pytest.approx(1.5)
    # 0 vs 6 discordant: 2 / 2**6
    m = stats.mcnemar(np.zeros(6, bool), np.ones(6, bool))
    assert m.p == pytest.approx(2 / 64) and m.odds_ratio == pytest.approx(6.5 / 0.5)


def test_mcnemar_chi_square_with_continuity_correction():
    a = np.array([1] * 10 + [0] * 30 + [1] * 50, bool)
    b = np.array([0] * 10 + [1] * 30 + [1] * 50, bool)
    m = stats.mcnemar(a, b)
    assert (m.b, m.c) == (10, 30) and m.method.startswith("chi-square")
    assert m.statistic == pytest.approx((20 - 1) ** 2 / 40)
    assert m.p == pytest.approx(ss.chi2.sf((20 - 1) ** 2 / 40, 1))
    assert stats.mcnemar(a, a).p == 1.0


def test_cohens_dz():
    a = np.array([0.5, 0.6, 0.7])
    b = np.array([0.6, 0.6, 0.9])
    d = b - a
    assert stats.cohens_dz(a, b) == pytest.approx(d.mean() / d.std(ddof=1))
    assert stats.cohens_dz(a, a) is None and stats.cohens_dz(a[:1], b[:1]) is None


def test_verdict_lines():
    base = np.array([0.60, 0.62, 0.58, 0.64, 0.61])
    aug = np.array([0.63, 0.61, 0.64, 0.66, 0.60])
    comp = stats.compare_paired(
        "dct", "accuracy", base=base, other=aug, resamples=1000, alpha=0.05, seed=0
    )
    mc = stats.mcnemar(np.zeros(4, bool), np.array([1, 0, 0, 0], bool))
    line = stats.verdict(comp, mc, alpha=0.05, n_test_images=75)
    assert line.startswith("+1.8 points, 95% CI [")
    assert "not significant at 0.05" in line and "5 seeds x 75 test images" in line
    assert "McNemar p=1" in line
    one = stats.compare_paired(
        "dct", "accuracy", base=base[:1], other=aug[:1], resamples=1000, alpha=0.05, seed=0
    )
    assert "need at least two seeds" in stats.verdict(one, None, alpha=0.05, n_test_images=75)
    sig = stats.compare_paired(
        "s",
        "accuracy",
        base=base,
        other=base + np.array([0.1, 0.11, 0.09, 0.1, 0.12]),
        resamples=1000,
        alpha=0.05,
        seed=0,
    )
    assert "significant at 0.05 (better than base)" in stats.verdict(
        sig, None, alpha=0.05, n_test_images=75
    )


def test_paired_t_mde_has_the_stated_power_by_simulation():
    """Differences drawn at the stated MDE are detected ~80% of the time, as promised."""
    rng = np.random.default_rng(0)
    n, sd = 5, 0.02
    observed = rng.normal(0, 1, n)
    observed = (observed - observed.mean()) / observed.std(ddof=1) * sd  # sample sd exactly sd
    power = stats.paired_t_mde(observed, alpha=0.05)
    assert power.units == 5 and power.mde is not None and 0.02 < power.mde < 0.05
    draws = rng.normal(power.mde, sd, size=(20000, n))
    t = draws.mean(1) / (draws.std(1, ddof=1) / np.sqrt(n))
    rejected = np.abs(t) > ss.t.ppf(0.975, n - 1)
    assert abs(rejected.mean() - 0.8) < 0.015
    # more seeds resolve smaller differences; one seed or no spread cannot be sized
    assert stats.paired_t_mde(np.tile(observed, 4), alpha=0.05).mde < power.mde
    assert stats.paired_t_mde(np.array([0.01]), alpha=0.05).mde is None
    assert "no spread" in stats.paired_t_mde(np.array([0.01, 0.01]), alpha=0.05).note


def test_mcnemar_mde_has_about_the_stated_power_by_simulation():
    rng = np.random.default_rng(1)
    n_pairs, n_discordant = 150, 30
    power = stats.mcnemar_mde(n_pairs, n_discordant, alpha=0.05)
    assert power.mde is not None and 0.05 < power.mde < 0.2
    p_d, d = n_discordant / n_pairs, power.mde
    p_b, p_c = (p_d - d) / 2, (p_d + d) / 2  # base right only / other right only
    hits = 0
    for _ in range(2000):
        u = rng.random(n_pairs)
        base = ~((u >= p_b) & (u < p_b + p_c))  # wrong where the other alone is right
        other = ~(u < p_b)
        hits += stats.mcnemar(base, other).p < 0.05
    # the normal approximation, against the continuity-corrected / exact test: close
    assert 0.7 < hits / 2000 < 0.88
    assert stats.mcnemar_mde(150, 0, alpha=0.05).mde is None
    assert "too few pairs" in stats.mcnemar_mde(4, 1, alpha=0.05).note
    line = stats.power_line(power)
    assert "McNemar" in line and "80% power" in line and "20.0%" in line


def test_paired_t_mde_with_two_seeds_is_finite_and_large():
    """Two seeds (df = 1) once made scipy's non-central t return NaN and compare crash."""
    power = stats.paired_t_mde(np.array([0.0, 0.0556]), alpha=0.05)
    assert power.mde is not None and math.isfinite(power.mde) and 0.3 < power.mde < 0.6


# --- several folds: Nadeau & Bengio's corrected resampled t-test (issue 14) ---------------

FOLDS_3x2 = np.array([0, 0, 1, 1, 2, 2])


def test_corrected_t_hand_computed():
    """3 folds x 2 seeds, n_test/n_train = 0.25: fold means, then the corrected t by hand."""
    diffs = np.array([0.02, 0.04, 0.06, 0.10, -0.01, 0.01])
    # fold means 0.03, 0.08, 0.00; mean 0.11/3; sd of the three means
    means = np.array([0.03, 0.08, 0.00])
    sd = math.sqrt(((means - means.mean()) ** 2).sum() / 2)
    se = math.sqrt(1 / 3 + 0.25) * sd
    t = means.mean() / se
    got = stats.corrected_resampled_t(diffs, FOLDS_3x2, ratio=0.25, alpha=0.05)
    assert got.n_folds == 3 and got.mean == pytest.approx(0.11 / 3)
    assert got.sd == pytest.approx(sd)
    assert got.test.statistic == pytest.approx(t)
    assert got.test.p == pytest.approx(2 * ss.t.sf(t, 2))
    half = ss.t.ppf(0.975, 2) * se
    assert (got.ci_low, got.ci_high) == pytest.approx((means.mean() - half, means.mean() + half))
    # the correction only widens: ratio 0 is the plain one-sample t on the fold means
    plain = stats.corrected_resampled_t(diffs, FOLDS_3x2, ratio=0.0, alpha=0.05)
    assert plain.test.p == pytest.approx(ss.ttest_1samp(means, 0).pvalue)
    assert plain.test.p < got.test.p
    # too little to test: one fold, or folds that all differ by the same amount
    assert (
        stats.corrected_resampled_t(diffs[:2], FOLDS_3x2[:2], ratio=0.25, alpha=0.05).test.p is None
    )
    same = stats.corrected_resampled_t(np.full(6, 0.02), FOLDS_3x2, ratio=0.25, alpha=0.05)
    assert same.test.p is None and same.ci_low is None and "same amount" in same.test.note


def _cv_differences(rng, *, reps, k, seeds, delta, fold_sd, seed_sd, ratio):
    """Per-unit differences of a k-fold x seeds design, ``reps`` times: fold effects with the
    correlation overlapping training sets give them in Nadeau & Bengio's model (a shared part
    of variance ratio x the independent part), seed noise within a fold."""
    shared = rng.normal(0, math.sqrt(ratio) * fold_sd, size=(reps, 1, 1))
    fold = rng.normal(0, fold_sd, size=(reps, k, 1))
    noise = rng.normal(0, seed_sd, size=(reps, k, seeds))
    return (delta + shared + fold + noise).reshape(reps, k * seeds)


def test_corrected_t_holds_alpha_where_counting_every_unit_does_not():
    """Why the seeds of a fold are averaged first: with fold-to-fold variation larger than
    seed-to-seed, J = folds x seeds rejects a true null far too often; J = folds does not."""
    rng = np.random.default_rng(0)
    k, seeds, ratio = 5, 3, 75 / 225
    draws = _cv_differences(
        rng, reps=2000, k=k, seeds=seeds, delta=0.0, fold_sd=0.04, seed_sd=0.01, ratio=ratio
    )
    folds = np.repeat(np.arange(k), seeds)
    by_fold = np.mean(
        [
            stats.corrected_resampled_t(d, folds, ratio=ratio, alpha=0.05).test.p < 0.05
            for d in draws
        ]
    )
    by_unit = np.mean(
        [
            stats.corrected_resampled_t(d, np.arange(k * seeds), ratio=ratio, alpha=0.05).test.p
            < 0.05
            for d in draws
        ]
    )
    plain = np.mean([stats.paired_t(np.zeros(k * seeds), d).p < 0.05 for d in draws])
    assert 0.03 < by_fold < 0.07
    assert by_unit > 0.1 and plain > 0.3  # why the verdict does not use them


def test_corrected_t_mde_has_the_stated_power_by_simulation():
    """Differences drawn at the stated MDE (5 folds x 3 seeds) are detected ~80% of the time."""
    rng = np.random.default_rng(2)
    k, seeds, ratio = 5, 3, 0.3
    folds = np.repeat(np.arange(k), seeds)
    observed = _cv_differences(
        rng, reps=1, k=k, seeds=seeds, delta=0.0, fold_sd=0.03, seed_sd=0.02, ratio=0.0
    )[0]
    sd = stats.fold_means(observed, folds).std(ddof=1)
    power = stats.corrected_t_mde(observed, folds, ratio=ratio, images_per_unit="75", alpha=0.05)
    assert power.units == 15 and power.mde is not None
    assert power.counted == "5 folds x 3 seeds = 15 units of 75 test images"
    # hand check against scipy's non-central t (finite at df = 4): power 0.8 at the MDE
    nc = power.mde / (sd * math.sqrt(1 / k + ratio))
    t_crit = ss.t.ppf(0.975, k - 1)
    assert ss.nct.sf(t_crit, k - 1, nc) + ss.nct.cdf(-t_crit, k - 1, nc) == pytest.approx(
        0.8, abs=1e-4
    )
    # simulated: fold means with exactly the observed independent sd, shared part ratio x it
    draws = _cv_differences(
        rng, reps=2000, k=k, seeds=1, delta=power.mde, fold_sd=sd, seed_sd=0.0, ratio=ratio
    )
    hits = np.mean(
        [
            stats.corrected_resampled_t(d, np.arange(k), ratio=ratio, alpha=0.05).test.p < 0.05
            for d in draws
        ]
    )
    assert abs(hits - 0.8) < 0.03  # 3.3 standard errors of 2000 draws
    line = stats.power_line(power)
    assert line.startswith("corrected resampled t-test over folds (5 folds x 3 seeds = 15 units")
    assert "80% power at alpha 0.05" in line and "variance x (1/5 + 0.3)" in line
    # the correction costs resolution: the same spread without it resolves less
    assert (
        power.mde
        > stats.corrected_t_mde(observed, folds, ratio=0.0, images_per_unit="75", alpha=0.05).mde
    )
    assert (
        "two folds"
        in stats.corrected_t_mde(
            observed[:3], folds[:3], ratio=ratio, images_per_unit="75", alpha=0.05
        ).note
    )


def test_verdict_with_folds_uses_the_corrected_test():
    base = np.array([0.60, 0.62, 0.58, 0.64, 0.61, 0.63])
    aug = base + np.array([0.03, 0.05, 0.06, 0.08, 0.02, 0.04])
    comp = stats.compare_paired(
        "dct",
        "accuracy",
        base=base,
        other=aug,
        resamples=500,
        alpha=0.05,
        seed=0,
        folds=FOLDS_3x2,
        ratio=0.5,
    )
    assert comp.corrected is not None and comp.decisive is comp.corrected.test
    assert comp.t.p < 0.05 < comp.corrected.test.p  # the plain t over units would say yes
    line = stats.verdict(comp, None, alpha=0.05, n_test_images=30)
    ci = f"[{100 * comp.corrected.ci_low:.1f}, {100 * comp.corrected.ci_high:.1f}]"
    assert line.startswith(f"+4.7 points, 95% CI {ci} (corrected t), not significant at 0.05")
    assert "corrected t p=" in line and "paired t over units p=" in line
    assert "3 folds x 2 seeds = 6 units, 30 test images" in line
    # one fold: no corrected test, the wording of a seeds-only design
    one = stats.compare_paired(
        "dct", "accuracy", base=base, other=aug, resamples=500, alpha=0.05, seed=0
    )
    assert one.corrected is None and one.decisive is one.t
    assert "fold" not in stats.verdict(one, None, alpha=0.05, n_test_images=30)
    with pytest.raises(ValueError, match="n_test / n_train"):
        stats.compare_paired(
            "d", "accuracy", base=base, other=aug, resamples=10, alpha=0.05, seed=0, folds=FOLDS_3x2
        )
