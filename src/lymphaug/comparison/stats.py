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

import numpy as np
from scipy import stats

#: McNemar: below this many discordant pairs use the exact binomial test.
MCNEMAR_EXACT_BELOW = 25
#: Wilcoxon: up to this many pairs enumerate all 2**n sign flips.
WILCOXON_EXACT_MAX_N = 16
WILCOXON_ZERO_METHOD = "pratt"


@dataclass(frozen=True)
class Summary:
    """Mean, std and percentile-bootstrap CI of the mean of one metric over seeds."""

    n: int
    mean: float
    std: float  # sample std (ddof=1); nan with one value
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class TestResult:
    """One p-value with what produced it; ``p`` is None when the test cannot run."""

    p: float | None
    statistic: float | None
    method: str
    note: str = ""


def bootstrap_ci(
    values: np.ndarray, resamples: int, alpha: float, seed: int
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


def summarise(values: np.ndarray, resamples: int, alpha: float, seed: int) -> Summary:
    values = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(values, resamples, alpha, seed)
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return Summary(int(values.size), float(values.mean()), std, low, high)


def paired_t(a: np.ndarray, b: np.ndarray) -> TestResult:
    """scipy.stats.ttest_rel(b, a), two-sided, with the degenerate cases made explicit."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = b - a
    method = "paired t-test (scipy.stats.ttest_rel, two-sided)"
    if d.size < 2:
        return TestResult(None, None, method, "needs at least two seeds")
    if np.all(d == d[0]):
        if d[0] == 0:
            return TestResult(1.0, 0.0, method, "all differences are zero")
        return TestResult(None, None, method, "undefined: every seed differs by the same amount")
    res = stats.ttest_rel(b, a)
    return TestResult(float(res.pvalue), float(res.statistic), method)


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
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n_nonzero = int(np.count_nonzero(d))
    name = f"Wilcoxon signed-rank (scipy.stats.wilcoxon, zero_method='{WILCOXON_ZERO_METHOD}'"
    if d.size < 2:
        return TestResult(None, None, name + ")", "needs at least two seeds")
    if n_nonzero == 0:
        return TestResult(1.0, 0.0, name + ")", "all differences are zero")
    notes = []
    if n_nonzero < d.size:
        notes.append(f"{d.size - n_nonzero} zero difference(s) ranked then dropped")
    nz = np.abs(d[d != 0])
    if np.unique(nz).size < nz.size:
        notes.append("tied |differences| (mid-ranks)")
    if d.size <= WILCOXON_EXACT_MAX_N:
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
    res = stats.wilcoxon(d, zero_method=WILCOXON_ZERO_METHOD, method=method)
    return TestResult(float(min(1.0, res.pvalue)), float(res.statistic), name, "; ".join(notes))


@dataclass(frozen=True)
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
    n = b + c
    odds = (c + 0.5) / (b + 0.5) if b == 0 or c == 0 else c / b
    if n == 0:
        return McNemar(len(correct_a), b, c, 1.0, None, "no discordant pairs", odds)
    if n < MCNEMAR_EXACT_BELOW:
        p = stats.binomtest(min(b, c), n, 0.5).pvalue
        return McNemar(len(correct_a), b, c, float(min(1.0, p)), None, "exact binomial", odds)
    stat = (abs(b - c) - 1) ** 2 / n
    p = stats.chi2.sf(stat, 1)
    return McNemar(
        len(correct_a), b, c, float(p), float(stat), "chi-square, continuity-corrected", odds
    )


def cohens_dz(a: np.ndarray, b: np.ndarray) -> float | None:
    """Effect size of paired differences: mean(b - a) / std(b - a, ddof=1)."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if d.size < 2:
        return None
    sd = d.std(ddof=1)
    if sd == 0:
        return None
    return float(d.mean() / sd)


@dataclass(frozen=True)
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
    base: np.ndarray,
    other: np.ndarray,
    resamples: int,
    alpha: float,
    seed: int,
) -> Comparison:
    base = np.asarray(base, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if base.shape != other.shape:
        raise ValueError(f"{condition}: {metric} over {other.size} seeds vs base {base.size}")
    diff = summarise(other - base, resamples, alpha, seed)
    return Comparison(
        condition,
        metric,
        int(base.size),
        diff,
        paired_t(base, other),
        wilcoxon(base, other, alpha),
        cohens_dz(base, other),
    )


def format_p(value: float | None) -> str:
    """A p-value as the report prints it everywhere (table and verdict alike)."""
    if value is None:
        return "n/a"
    return f"{value:.3g}" if value >= 0.001 else "<0.001"


def verdict(comp: Comparison, mc: McNemar | None, alpha: float, n_test_images: int) -> str:
    """One plain-language line: direction and size, CI, significance, every p-value.

    The decision uses the paired t-test across seeds (seeds are the replication
    unit); McNemar disagreeing is mentioned, not used to overrule it.
    """
    pts = 100 * comp.diff.mean
    ci = f"95% CI [{100 * comp.diff.ci_low:.1f}, {100 * comp.diff.ci_high:.1f}]"
    if alpha != 0.05:
        ci = ci.replace("95%", f"{100 * (1 - alpha):g}%")
    size = f"{pts:+.1f} points"
    design = f"{comp.n_seeds} seed{'s' if comp.n_seeds != 1 else ''} x {n_test_images} test images"
    ps = [f"paired t p={format_p(comp.t.p)}", f"Wilcoxon p={format_p(comp.wilcoxon.p)}"]
    if mc is not None:
        ps.append(f"McNemar p={format_p(mc.p)}")
    detail = f"({'; '.join([', '.join(ps), design])})"
    if comp.n_seeds < 2:
        return (
            f"{size}, no CI or seed-level test: the paired tests need at least two seeds {detail}"
        )
    if comp.t.p is None:
        decision = "significance undefined (" + comp.t.note + ")"
    elif comp.t.p < alpha:
        better = "better" if pts > 0 else "worse"
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
