"""The comparison's statistics, as pure functions of plain arrays (no I/O).

Why these tests: seeds are the unit of replication of a training run, so the
primary comparison of an augmented condition with ``base`` is *paired across
seeds* (seed ``s`` of both conditions shares the split and initialisation seed):
a paired t-test and a Wilcoxon signed-rank test on the per-seed differences.
McNemar's test on the per-image predictions (pooled over seeds, paired by
(seed, image)) is added because with 2-5 seeds the seed-level tests have little
power; it ignores seed-to-seed variation and so answers a narrower question
("on these test images, do the two conditions disagree in a lopsided way?").

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
class Comparison:
    """One augmented condition against base, on one metric (values as fractions)."""

    condition: str
    metric: str
    n_seeds: int
    diff: Summary  # of the per-seed differences (condition - base)
    t: TestResult
    wilcoxon: TestResult
    dz: float | None


def compare_paired(
    condition: str,
    metric: str,
    *,
    base: np.ndarray,
    other: np.ndarray,
    resamples: int,
    alpha: float,
    seed: int,
) -> Comparison:
    """``other`` against ``base``, seed by seed: every seed-level test of one verdict in one
    value, so the table and the verdict line cannot disagree about the numbers."""
    base = np.asarray(base, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if base.shape != other.shape:
        raise ValueError(f"{condition}: {metric} over {other.size} seeds vs base {base.size}")
    diff = summarise(other - base, resamples=resamples, alpha=alpha, seed=seed)
    return Comparison(
        condition=condition,
        metric=metric,
        n_seeds=int(base.size),
        diff=diff,
        t=paired_t(base, other),
        wilcoxon=wilcoxon(base, other, alpha=alpha),
        dz=cohens_dz(base, other),
    )


#: The power the report's "smallest detectable difference" line is stated at.
POWER = 0.8


@dataclass(frozen=True, kw_only=True)
class Power:
    """The smallest true difference a test detects with probability ``power`` at ``alpha``.

    ``mde`` is a fraction (accuracy points / 100), None with ``note`` saying why it cannot
    be estimated. It rests on the spread this run observed (``basis``), so it is itself an
    estimate: with few units it is a rough one, which is the point of printing it.
    """

    test: str
    units: int
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


def paired_t_mde(diffs: np.ndarray, *, alpha: float, power: float = POWER) -> Power:
    """Smallest mean difference a two-sided paired t-test detects, from the observed spread.

    Exact under normal differences: the non-central t with n - 1 degrees of freedom and
    non-centrality delta * sqrt(n) / sd, solved for delta.
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    n = int(diffs.size)
    sized = partial(Power, test="paired t-test over seeds", units=n, alpha=alpha, power=power)
    if n < 2:
        return sized(mde=None, basis="", note="needs at least two seeds")
    sd = float(diffs.std(ddof=1))
    basis = f"sd of the paired differences {100 * sd:.1f} points"
    if sd == 0:
        return sized(
            mde=None, basis=basis, note="the differences do not vary: no spread to size a test on"
        )
    df = n - 1
    t_crit = float(stats.t.ppf(1 - alpha / 2, df))

    def shortfall(delta: float) -> float:
        return _t_test_power(delta * math.sqrt(n) / sd, df=df, t_crit=t_crit) - power

    high = sd
    while shortfall(high) < 0:
        high *= 2
    delta = float(optimize.brentq(shortfall, 0.0, high, xtol=1e-6 * sd))
    return sized(mde=delta, basis=basis)


def mcnemar_mde(n_pairs: int, n_discordant: int, *, alpha: float, power: float = POWER) -> Power:
    """Smallest accuracy difference McNemar's test detects over ``n_pairs`` paired images.

    Normal approximation (Connor, 1987) at the observed discordance rate p_d:
    sqrt(n) * d = z(1 - alpha/2) * sqrt(p_d) + z(power) * sqrt(p_d - d^2), solved for d.
    """
    sized = partial(
        Power, test="McNemar over (seed, image) pairs", units=n_pairs, alpha=alpha, power=power
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
    units = f"{power.units} {'seeds' if power.test.startswith('paired') else 'pairs'}"
    if power.mde is None:
        return f"{power.test} ({units}): smallest detectable difference unknown ({power.note})"
    return (
        f"{power.test} ({units}): differences of {100 * power.mde:.1f} points or more are "
        f"detected with {100 * power.power:.0f}% power at alpha {power.alpha:g} "
        f"({power.basis})"
    )


def format_p(value: float | None) -> str:
    """A p-value as the report prints it everywhere (table and verdict alike)."""
    if value is None:
        return "n/a"
    return f"{value:.3g}" if value >= 0.001 else "<0.001"


def verdict(comp: Comparison, mc: McNemar | None, *, alpha: float, n_test_images: int) -> str:
    """One plain-language line: direction and size, CI, significance, every p-value.

    The decision uses the paired t-test across seeds (seeds are the replication
    unit); McNemar disagreeing is mentioned, not used to overrule it.
    """
    points = 100 * comp.diff.mean
    ci = f"95% CI [{100 * comp.diff.ci_low:.1f}, {100 * comp.diff.ci_high:.1f}]"
    if alpha != 0.05:
        ci = ci.replace("95%", f"{100 * (1 - alpha):g}%")
    size = f"{points:+.1f} points"
    design = f"{comp.n_seeds} seed{'s' if comp.n_seeds != 1 else ''} x {n_test_images} test images"
    p_values = [f"paired t p={format_p(comp.t.p)}", f"Wilcoxon p={format_p(comp.wilcoxon.p)}"]
    if mc is not None:
        p_values.append(f"McNemar p={format_p(mc.p)}")
    detail = f"({'; '.join([', '.join(p_values), design])})"
    if comp.n_seeds < 2:
        return (
            f"{size}, no CI or seed-level test: the paired tests need at least two seeds {detail}"
        )
    if comp.t.p is None:
        decision = "significance undefined (" + comp.t.note + ")"
    elif comp.t.p < alpha:
        better = "better" if points > 0 else "worse"
        decision = f"significant at {alpha:g} ({better} than base)"
    else:
        decision = f"not significant at {alpha:g}"
    extra = ""
    if mc is not None and comp.t.p is not None and (mc.p < alpha) != (comp.t.p < alpha):
        extra = (
            f"; McNemar alone {'is' if mc.p < alpha else 'is not'} significant "
            "(it pools images over seeds and ignores seed-to-seed variation)"
        )
    return f"{size}, {ci}, {decision} {detail}{extra}"
