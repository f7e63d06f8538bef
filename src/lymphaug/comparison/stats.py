"""The comparison's statistics, as pure functions of plain arrays (no I/O).

Why these tests: seeds are the unit of replication of a training run, so the
primary comparison of an augmented condition with ``base`` is *paired across
seeds* (seed ``s`` of both conditions shares the split and initialisation seed):
a paired t-test and a Wilcoxon signed-rank test on the per-seed differences.
McNemar's test on the per-image predictions (pooled over seeds, paired by
(seed, image)) is added because with 2-5 seeds the seed-level tests have little
power; it ignores seed-to-seed variation and so answers a narrower question
("on these test images, do the two conditions disagree in a lopsided way?").

With k >= 2 cross-validation folds the unit of replication is a (fold, seed) run, and the
units are not independent: every fold's classifier is trained on images that are in the
other folds' training sets, and the seeds of one fold share its training and test images.
A plain paired t-test over such units understates the variance of the mean difference, so
the verdict uses Nadeau & Bengio's (2003) corrected resampled t-test over the folds
(:func:`corrected_resampled_t`), the seeds of a fold averaged first; the plain paired t
and Wilcoxon over the units stay in the report with that caveat.

Every function states its choices (zero_method, exact vs asymptotic) in its
return value so the report can print them, instead of leaving them implicit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import integrate, optimize, stats

#: McNemar: below this many discordant pairs use the exact binomial test.
MCNEMAR_EXACT_BELOW = 25
#: Wilcoxon: up to this many pairs enumerate all 2**n sign flips.
WILCOXON_EXACT_MAX_N = 16
WILCOXON_ZERO_METHOD = "pratt"


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Mean, std and percentile-bootstrap CI of the mean of one metric over seeds."""

    n: int
    mean: float
    std: float  # sample std (ddof=1); nan with one value
    ci_low: float
    ci_high: float


@dataclass(frozen=True, kw_only=True)
class TestResult:
    """One p-value with what produced it; ``p`` is None when the test cannot run."""

    p: float | None
    statistic: float | None
    method: str
    note: str = ""


def bootstrap_ci(
    values: np.ndarray, *, resamples: int, alpha: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, deterministic for ``seed``.

    With one value there is nothing to resample: the interval collapses to it
    (the report says the CI needs at least two seeds).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if values.size == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def summarise(values: np.ndarray, *, resamples: int, alpha: float, seed: int) -> Summary:
    """One metric over seeds as the report shows it: the spread and the CI side by side,
    so a mean is never read without its uncertainty."""
    values = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(values, resamples=resamples, alpha=alpha, seed=seed)
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return Summary(n=int(values.size), mean=float(values.mean()), std=std, ci_low=low, ci_high=high)


def paired_t(a: np.ndarray, b: np.ndarray) -> TestResult:
    """scipy.stats.ttest_rel(b, a), two-sided, with the degenerate cases made explicit."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diffs = b - a
    method = "paired t-test (scipy.stats.ttest_rel, two-sided)"
    if diffs.size < 2:
        return TestResult(p=None, statistic=None, method=method, note="needs at least two seeds")
    if np.all(diffs == diffs[0]):
        if diffs[0] == 0:
            return TestResult(p=1.0, statistic=0.0, method=method, note="all differences are zero")
        return TestResult(
            p=None,
            statistic=None,
            method=method,
            note="undefined: every seed differs by the same amount",
        )
    res = stats.ttest_rel(b, a)
    return TestResult(p=float(res.pvalue), statistic=float(res.statistic), method=method)


def wilcoxon_min_p(n_nonzero: int) -> float:
    """Smallest two-sided p an exact signed-rank test can give with n non-zero pairs."""
    return min(1.0, 2.0 / 2**n_nonzero) if n_nonzero > 0 else 1.0


def wilcoxon(a: np.ndarray, b: np.ndarray, alpha: float = 0.05) -> TestResult:
    """Wilcoxon signed-rank on ``b - a`` with Pratt's treatment of zero differences.

    zero_method="pratt": zero differences take part in the ranking (so they
    shift the ranks of the others, which is the conservative choice) and are
    then dropped. Accuracy on a small test set is discrete, so zero differences
    and tied |differences| are common; the tabulated exact distribution assumes
    neither, so for up to WILCOXON_EXACT_MAX_N non-zero differences the p-value
    comes from enumerating all sign flips of the actual (tied) ranks
    (scipy's PermutationMethod), which is exact conditional on the ties; above
    that, the normal approximation with tie correction.
    """
    diffs = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n_nonzero = int(np.count_nonzero(diffs))
    name = f"Wilcoxon signed-rank (scipy.stats.wilcoxon, zero_method='{WILCOXON_ZERO_METHOD}'"
    if diffs.size < 2:
        return TestResult(
            p=None, statistic=None, method=name + ")", note="needs at least two seeds"
        )
    if n_nonzero == 0:
        return TestResult(p=1.0, statistic=0.0, method=name + ")", note="all differences are zero")
    notes = []
    if n_nonzero < diffs.size:
        notes.append(f"{diffs.size - n_nonzero} zero difference(s) ranked then dropped")
    nonzero_sizes = np.abs(diffs[diffs != 0])
    if np.unique(nonzero_sizes).size < nonzero_sizes.size:
        notes.append("tied |differences| (mid-ranks)")
    if diffs.size <= WILCOXON_EXACT_MAX_N:
        # n_resamples=inf: enumerate every sign flip (a finite count would sample them)
        method = stats.PermutationMethod(n_resamples=np.inf)
        name += ", exact: all 2^n sign flips)"
        if wilcoxon_min_p(n_nonzero) > alpha:
            notes.append(
                f"with {n_nonzero} non-zero pair(s) the smallest possible p is "
                f"{wilcoxon_min_p(n_nonzero):.3g} > {alpha:g}: it cannot be significant"
            )
    else:
        method = "approx"
        name += ", normal approximation with tie correction)"
    res = stats.wilcoxon(diffs, zero_method=WILCOXON_ZERO_METHOD, method=method)
    return TestResult(
        p=float(min(1.0, res.pvalue)),
        statistic=float(res.statistic),
        method=name,
        note="; ".join(notes),
    )


@dataclass(frozen=True, kw_only=True)
class McNemar:
    """McNemar's test on paired correct/incorrect outcomes.

    ``b``: pairs where A was right and B wrong; ``c``: A wrong, B right.
    ``odds_ratio`` = c / b (B's odds of being the one that is right when the two
    disagree), with a 0.5 Haldane correction when either count is zero.
    """

    n_pairs: int
    b: int
    c: int
    p: float
    statistic: float | None
    method: str
    odds_ratio: float


def discordant_counts(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int]:
    """(b, c): only the pairs where the two conditions disagree carry McNemar's evidence."""
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError("McNemar needs the same pairs for both conditions")
    return int(np.sum(correct_a & ~correct_b)), int(np.sum(~correct_a & correct_b))


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemar:
    """Exact binomial McNemar below MCNEMAR_EXACT_BELOW discordant pairs, else chi-square.

    Exact: two-sided binomial test of min(b, c) out of b + c at p = 1/2
    (scipy.stats.binomtest). Otherwise: chi-square with Edwards' continuity
    correction, (|b - c| - 1)^2 / (b + c), 1 degree of freedom.
    """
    b, c = discordant_counts(correct_a, correct_b)
    n_discordant = b + c
    odds = (c + 0.5) / (b + 0.5) if b == 0 or c == 0 else c / b
    n_pairs = len(correct_a)
    if n_discordant == 0:
        p, statistic, method = 1.0, None, "no discordant pairs"
    elif n_discordant < MCNEMAR_EXACT_BELOW:
        p = float(min(1.0, stats.binomtest(min(b, c), n_discordant, 0.5).pvalue))
        statistic, method = None, "exact binomial"
    else:
        chi2 = (abs(b - c) - 1) ** 2 / n_discordant
        p, statistic = float(stats.chi2.sf(chi2, 1)), float(chi2)
        method = "chi-square, continuity-corrected"
    return McNemar(
        n_pairs=n_pairs, b=b, c=c, p=p, statistic=statistic, method=method, odds_ratio=odds
    )


def cohens_dz(a: np.ndarray, b: np.ndarray) -> float | None:
    """Effect size of paired differences: mean(b - a) / std(b - a, ddof=1)."""
    diffs = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if diffs.size < 2:
        return None
    sd = diffs.std(ddof=1)
    if sd == 0:
        return None
    return float(diffs.mean() / sd)


@dataclass(frozen=True, kw_only=True)
class Corrected:
    """Nadeau & Bengio's corrected resampled t-test over folds, with its confidence interval.

    ``ratio`` is n_test / n_train (mean over folds), the term the variance is inflated by;
    ``sd`` the standard deviation of the per-fold mean differences. The CI is None when the
    test cannot run (fewer than two folds, or differences that do not vary).
    """

    test: TestResult
    n_folds: int
    ratio: float
    mean: float
    sd: float | None
    ci_low: float | None
    ci_high: float | None


def fold_means(diffs: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Per-unit differences averaged within each fold (folds in sorted order).

    The seeds of one fold share its training and test images, so they are one resample of
    the data, not several: their mean is that fold's score (the learner being "train with
    each seed"), which is what Nadeau & Bengio's correction is derived for.
    """
    diffs, folds = np.asarray(diffs, dtype=np.float64), np.asarray(folds)
    if diffs.shape != folds.shape:
        raise ValueError("one fold index per difference")
    return np.array([diffs[folds == fold].mean() for fold in np.unique(folds)])


def fold_seed_design(*, n_folds: int, n_units: int) -> str:
    """A k-fold comparison's replication in words ("5 folds x 3 seeds = 15 units"): the one
    phrasing the report's verdicts, its power lines and the console share."""
    seeds = n_units // max(n_folds, 1)
    return f"{n_folds} folds x {seeds} seed{'s' if seeds != 1 else ''} = {n_units} units"


def nadeau_bengio_inflation(n_folds: int, ratio: float) -> float:
    """The corrected variance factor 1/J + n_test/n_train (J resamples, here folds).

    The plain 1/J assumes independent resamples; the folds' training sets overlap, which
    correlates their scores with correlation about n_test / (n_test + n_train), and the
    added n_test/n_train term accounts for it (Nadeau & Bengio 2003, eq. for the corrected
    resampled t)."""
    return 1.0 / n_folds + ratio


def corrected_resampled_t(
    diffs: np.ndarray, folds: np.ndarray, *, ratio: float, alpha: float
) -> Corrected:
    """Two-sided corrected resampled t-test and CI on the per-fold mean differences.

    t = mean / sqrt((1/J + n_test/n_train) * s^2), J folds, s the sd of the fold means,
    J - 1 degrees of freedom; the CI is mean -/+ t(1 - alpha/2, J - 1) * that standard error.
    Why the fold means and not every (fold, seed) unit as its own resample: units of one
    fold share the test set, so J = folds x seeds overstates the independent information
    (tests/comparison/test_stats.py measures its type I error above alpha when the folds
    differ more than the seeds do); with one seed the two are the same.
    """
    means = fold_means(diffs, folds)
    n_folds = int(means.size)
    method = (
        "corrected resampled t-test (Nadeau & Bengio 2003) over folds, "
        "variance x (1/J + n_test/n_train)"
    )
    mean = float(means.mean()) if n_folds else math.nan
    result = partial(Corrected, n_folds=n_folds, ratio=ratio, mean=mean)
    if n_folds < 2:
        test = TestResult(p=None, statistic=None, method=method, note="needs at least two folds")
        return result(test=test, sd=None, ci_low=None, ci_high=None)
    sd = float(means.std(ddof=1))
    if sd == 0:
        note = "all differences are zero" if mean == 0 else "every fold differs by the same amount"
        test = TestResult(p=1.0 if mean == 0 else None, statistic=None, method=method, note=note)
        return result(test=test, sd=sd, ci_low=None, ci_high=None)
    se = math.sqrt(nadeau_bengio_inflation(n_folds, ratio)) * sd
    statistic = mean / se
    df = n_folds - 1
    p = float(2 * stats.t.sf(abs(statistic), df))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    test = TestResult(p=p, statistic=float(statistic), method=method)
    return result(test=test, sd=sd, ci_low=mean - half, ci_high=mean + half)


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """One augmented condition against base, on one metric (values as fractions)."""

    condition: str
    metric: str
    n_units: int  # paired runs: seeds, or (fold, seed) units with several folds
    n_folds: int
    diff: Summary  # of the per-unit differences (condition - base)
    t: TestResult  # plain paired t over the units
    wilcoxon: TestResult
    dz: float | None
    corrected: Corrected | None  # over folds; None with one fold

    @property
    def decisive(self) -> TestResult:
        """The test the verdict decides by: corrected over folds, else paired t over seeds."""
        return self.corrected.test if self.corrected is not None else self.t


def compare_paired(
    condition: str,
    metric: str,
    *,
    base: np.ndarray,
    other: np.ndarray,
    resamples: int,
    alpha: float,
    seed: int,
    folds: np.ndarray | None = None,
    ratio: float | None = None,
) -> Comparison:
    """``other`` against ``base``, unit by unit: every test of one verdict in one value, so
    the table and the verdict line cannot disagree about the numbers.

    ``folds``: the fold of each unit; with two or more folds the corrected resampled t-test
    over them is added (``ratio`` = n_test / n_train) and decides the verdict.
    """
    base = np.asarray(base, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if base.shape != other.shape:
        raise ValueError(f"{condition}: {metric} over {other.size} units vs base {base.size}")
    folds = np.zeros(base.size, np.int64) if folds is None else np.asarray(folds)
    n_folds = int(np.unique(folds).size)
    corrected = None
    if n_folds > 1:
        if ratio is None:
            raise ValueError("several folds need n_test / n_train for the corrected t-test")
        corrected = corrected_resampled_t(other - base, folds, ratio=ratio, alpha=alpha)
    return Comparison(
        condition=condition,
        metric=metric,
        n_units=int(base.size),
        n_folds=n_folds,
        diff=summarise(other - base, resamples=resamples, alpha=alpha, seed=seed),
        t=paired_t(base, other),
        wilcoxon=wilcoxon(base, other, alpha=alpha),
        dz=cohens_dz(base, other),
        corrected=corrected,
    )


#: The power the report's "smallest detectable difference" line is stated at.
POWER = 0.8


@dataclass(frozen=True, kw_only=True)
class Power:
    """The smallest true difference a test detects with probability ``power`` at ``alpha``.

    ``mde`` is a fraction (accuracy points / 100), None with ``note`` saying why it cannot
    be estimated. It rests on the spread this run observed (``basis``), so it is itself an
    estimate: with few units it is a rough one, which is the point of printing it.
    ``counted`` says what the units are ("3 seeds", "18 pairs", "5 folds x 3 seeds ...").
    """

    test: str
    units: int
    counted: str
    alpha: float
    power: float
    mde: float | None
    basis: str
    note: str = ""


def _t_test_power(nc: float, *, df: int, t_crit: float) -> float:
    """P(|T| > t_crit) for T non-central t(df, nc), integrated over the chi-square quantiles.

    scipy.stats.nct returns NaN far in its tails (df = 1, nc > ~40: two seeds), which is
    exactly where a small design's power is decided; this integral stays finite there.
    """

    def given_quantile(u: float) -> float:
        scale = t_crit * math.sqrt(stats.chi2.ppf(u, df) / df)
        return float(stats.norm.sf(scale - nc) + stats.norm.cdf(-scale - nc))

    value, _ = integrate.quad(given_quantile, 0.0, 1.0, limit=200)
    return value


def _t_mde(sd: float, *, n: int, inflation: float, alpha: float, power: float) -> float:
    """The mean difference a two-sided t-test on ``n`` values (n - 1 degrees of freedom,
    standard error sd * sqrt(inflation)) detects with ``power``: exact under normal values,
    from the non-central t with non-centrality delta / (sd * sqrt(inflation))."""
    df = n - 1
    t_crit = float(stats.t.ppf(1 - alpha / 2, df))
    se = sd * math.sqrt(inflation)

    def shortfall(delta: float) -> float:
        return _t_test_power(delta / se, df=df, t_crit=t_crit) - power

    high = sd
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-6 * sd))


def paired_t_mde(diffs: np.ndarray, *, alpha: float, power: float = POWER) -> Power:
    """Smallest mean difference a two-sided paired t-test over seeds detects, from the
    observed spread of the per-seed differences (standard error sd / sqrt(n))."""
    diffs = np.asarray(diffs, dtype=np.float64)
    n = int(diffs.size)
    sized = partial(
        Power,
        test="paired t-test over seeds",
        units=n,
        counted=f"{n} seeds",
        alpha=alpha,
        power=power,
    )
    if n < 2:
        return sized(mde=None, basis="", note="needs at least two seeds")
    sd = float(diffs.std(ddof=1))
    basis = f"sd of the paired differences {100 * sd:.1f} points"
    if sd == 0:
        return sized(
            mde=None, basis=basis, note="the differences do not vary: no spread to size a test on"
        )
    return sized(mde=_t_mde(sd, n=n, inflation=1 / n, alpha=alpha, power=power), basis=basis)


def corrected_t_mde(
    diffs: np.ndarray,
    folds: np.ndarray,
    *,
    ratio: float,
    images_per_unit: str,
    alpha: float,
    power: float = POWER,
) -> Power:
    """Smallest mean difference :func:`corrected_resampled_t` detects with ``power``.

    The same non-central t as the paired test, on the J fold means with J - 1 degrees of
    freedom and standard error sd * sqrt(1/J + n_test/n_train): exact when the fold scores
    are equicorrelated normals with the correlation the correction assumes (the test in
    tests/comparison/test_stats.py simulates that). More seeds shrink it through a smaller
    sd of the fold means; more folds through both J and the degrees of freedom.
    """
    means = fold_means(diffs, folds)
    n_folds, n_units = int(means.size), int(np.asarray(diffs).size)
    sized = partial(
        Power,
        test="corrected resampled t-test over folds",
        units=n_units,
        counted=(
            f"{fold_seed_design(n_folds=n_folds, n_units=n_units)} of {images_per_unit} test images"
        ),
        alpha=alpha,
        power=power,
    )
    if n_folds < 2:
        return sized(mde=None, basis="", note="needs at least two folds")
    sd = float(means.std(ddof=1))
    inflation = nadeau_bengio_inflation(n_folds, ratio)
    basis = (
        f"sd of the per-fold mean differences {100 * sd:.1f} points, variance x "
        f"(1/{n_folds} + {ratio:.3g})"
    )
    if sd == 0:
        return sized(
            mde=None, basis=basis, note="the differences do not vary: no spread to size a test on"
        )
    mde = _t_mde(sd, n=n_folds, inflation=inflation, alpha=alpha, power=power)
    return sized(mde=mde, basis=basis)


def mcnemar_mde(n_pairs: int, n_discordant: int, *, alpha: float, power: float = POWER) -> Power:
    """Smallest accuracy difference McNemar's test detects over ``n_pairs`` paired images.

    Normal approximation (Connor, 1987) at the observed discordance rate p_d:
    sqrt(n) * d = z(1 - alpha/2) * sqrt(p_d) + z(power) * sqrt(p_d - d^2), solved for d.
    """
    sized = partial(
        Power,
        test="McNemar over (seed, image) pairs",
        units=n_pairs,
        counted=f"{n_pairs} pairs",
        alpha=alpha,
        power=power,
    )
    if n_pairs == 0 or n_discordant == 0:
        return sized(
            mde=None, basis="", note="no discordant pairs observed: no rate to size the test on"
        )
    p_d = n_discordant / n_pairs
    basis = f"the two conditions disagree on {100 * p_d:.1f}% of the pairs"
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)

    def shortfall(d: float) -> float:
        return math.sqrt(n_pairs) * d - z_a * math.sqrt(p_d) - z_b * math.sqrt(p_d - d * d)

    if shortfall(p_d) < 0:  # not even a one-sided sweep of every disagreement is detectable
        return sized(
            mde=None,
            basis=basis,
            note="too few pairs: no difference this small a set can show is detectable",
        )
    d = float(optimize.brentq(shortfall, 0.0, p_d, xtol=1e-9))
    return sized(mde=d, basis=basis)


def power_line(power: Power) -> str:
    """One sentence: what the design can resolve, and what that estimate rests on."""
    if power.mde is None:
        return (
            f"{power.test} ({power.counted}): smallest detectable difference unknown ({power.note})"
        )
    return (
        f"{power.test} ({power.counted}): differences of {100 * power.mde:.1f} points or more "
        f"are detected with {100 * power.power:.0f}% power at alpha {power.alpha:g} "
        f"({power.basis})"
    )


def format_p(value: float | None) -> str:
    """A p-value as the report prints it everywhere (table and verdict alike)."""
    if value is None:
        return "n/a"
    return f"{value:.3g}" if value >= 0.001 else "<0.001"


def verdict(comp: Comparison, mc: McNemar | None, *, alpha: float, n_test_images: int) -> str:
    """One plain-language line: direction and size, CI, significance, every p-value.

    The decision uses :attr:`Comparison.decisive`: the paired t-test across seeds with one
    fold (seeds are the replication unit), the corrected resampled t-test over folds with
    several; the other tests are printed, and McNemar disagreeing is mentioned, never used
    to overrule it.
    """
    points = 100 * comp.diff.mean
    low, high = comp.diff.ci_low, comp.diff.ci_high
    if comp.corrected is not None:
        low, high = comp.corrected.ci_low, comp.corrected.ci_high
    ci = ""
    if low is not None and high is not None:
        ci = f"{100 * (1 - alpha):g}% CI [{100 * low:.1f}, {100 * high:.1f}]"
    size = f"{points:+.1f} points"
    p_values = [f"paired t p={format_p(comp.t.p)}", f"Wilcoxon p={format_p(comp.wilcoxon.p)}"]
    if comp.corrected is None:
        units = comp.n_units
        design = f"{units} seed{'s' if units != 1 else ''} x {n_test_images} test images"
    else:
        ci += " (corrected t)" if ci else ""
        p_values = [f"corrected t p={format_p(comp.corrected.test.p)}"] + [
            p.replace("paired t", "paired t over units") for p in p_values
        ]
        design = (
            f"{fold_seed_design(n_folds=comp.n_folds, n_units=comp.n_units)}, "
            f"{n_test_images} test images"
        )
    if mc is not None:
        p_values.append(f"McNemar p={format_p(mc.p)}")
    detail = f"({'; '.join([', '.join(p_values), design])})"
    if comp.n_units < 2:
        return (
            f"{size}, no CI or seed-level test: the paired tests need at least two seeds {detail}"
        )
    decisive = comp.decisive
    ci = ci or "no CI"
    if decisive.p is None:
        decision = "significance undefined (" + decisive.note + ")"
    elif decisive.p < alpha:
        better = "better" if points > 0 else "worse"
        decision = f"significant at {alpha:g} ({better} than base)"
    else:
        decision = f"not significant at {alpha:g}"
    extra = ""
    if mc is not None and decisive.p is not None and (mc.p < alpha) != (decisive.p < alpha):
        extra = (
            f"; McNemar alone {'is' if mc.p < alpha else 'is not'} significant "
            "(it pools images over seeds and ignores seed-to-seed variation)"
        )
    return f"{size}, {ci}, {decision} {detail}{extra}"
