"""The statistics of the comparison, computed once from the paired runs (pure).

:func:`analyse` turns every (condition, fold, seed) result into per-condition summaries with
bootstrap CIs, paired tests of each augmented condition against ``base`` (runs paired by
(fold, seed), images paired for McNemar) and the verdict lines; :func:`metrics_dict` is the
``reports/metrics.json`` view of it. The report, the figures and MLflow read the same
:class:`Analysis`, so no number is computed twice.

With one fold (the quick profile) a unit is a seed and everything is as it was before
folds existed. With k folds a unit is a (fold, seed) run scored on that fold's test images;
across the folds every image is scored once per seed, so a seed's accuracy "over all
images" pools its k runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lymphaug.common.config import CompareConfig
from lymphaug.common.metrics import macro_f1
from lymphaug.comparison import stats
from lymphaug.comparison.results import RunResult

if TYPE_CHECKING:  # annotations only: synthetic_quality is imported lazily (torch)
    from lymphaug.comparison.pixel_match import PixelMatch
    from lymphaug.comparison.synthetic_quality import QualityReport

METRICS = ("accuracy", "macro_f1")


@dataclass(kw_only=True)
class Analysis:
    """Every statistic the report, the plots and metrics.json show, computed once."""

    conditions: list[str]
    seeds: list[int]
    folds: list[int]
    units: list[tuple[int, int]]  # (fold, seed): the order of every per-unit list
    n_test: int  # test images over all folds (each scored once per seed)
    fold_sizes: dict[int, int]  # test images of each fold
    ratio: float | None  # n_test / n_train of a fold (mean over folds); None with one fold
    ratio_basis: str  # where n_train came from
    classes: list[str]
    summaries: dict[str, dict[str, stats.Summary]]  # condition -> metric -> over units
    per_unit: dict[str, dict[str, list[float]]]  # condition -> metric -> values
    per_seed: dict[str, dict[str, list[float]]]  # condition -> metric -> over all images
    pooled: dict[str, float]  # condition -> accuracy over every (image, seed) prediction
    comparisons: dict[str, dict[str, stats.Comparison]]  # condition -> metric -> vs base
    mcnemar: dict[str, stats.McNemar]
    power: dict[str, list[stats.Power]]  # condition -> smallest detectable differences
    verdicts: dict[str, str]  # condition -> accuracy verdict line
    f1_verdicts: dict[str, str]
    confusion: dict[str, np.ndarray]  # summed over folds and seeds
    alpha: float

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    @property
    def images_per_unit(self) -> str:
        return size_range(self.fold_sizes)

    @property
    def design(self) -> str:
        """The replication in a few words, for the console and the MLflow parent's note."""
        seeds = f"{len(self.seeds)} seed(s)"
        if self.n_folds == 1:
            return f"{seeds} x {self.n_test} test images"
        units = stats.fold_seed_design(n_folds=self.n_folds, n_units=len(self.units))
        return f"{units}, {self.n_test} test images"

    def design_params(self) -> dict[str, str]:
        """The design as MLflow params of the parent run (fixed by params.yaml, as the
        parent is: its key hashes params.yaml), so runs compare by design."""
        return {
            "compare.n_folds": str(self.n_folds),
            "compare.n_seeds": str(len(self.seeds)),
            "compare.n_units": str(len(self.units)),
        }


def size_range(fold_sizes: dict[int, int]) -> str:
    """Test images per unit: "75", or "74-75" when the folds' test sets differ by one."""
    low, high = min(fold_sizes.values()), max(fold_sizes.values())
    return str(low) if low == high else f"{low}-{high}"


def units_of(runs: dict[str, list[RunResult]]) -> list[tuple[int, int]]:
    """The (fold, seed) units, in the runs' order; every condition must have each once, and
    every fold every seed (the corrected t-test averages the seeds of a fold)."""
    conditions = list(runs)
    units = [(run.fold, run.seed) for run in runs[conditions[0]]]
    folds, seeds = dict.fromkeys(f for f, _ in units), dict.fromkeys(s for _, s in units)
    if len(set(units)) != len(units) or len(units) != len(folds) * len(seeds):
        raise ValueError(f"runs must cover every fold x seed once, got {units}")
    for condition in conditions[1:]:
        got = sorted((run.fold, run.seed) for run in runs[condition])
        if got != sorted(units):
            raise ValueError(f"{condition} has runs {got}, {conditions[0]} has {sorted(units)}")
    return units


def train_test_ratio(runs: list[RunResult], n_test: int) -> tuple[float, str]:
    """n_test / n_train per fold, averaged: the term Nadeau & Bengio's variance adds.

    n_train is the real training images each run recorded (train's metrics.json); a run
    without it counts every image outside its test fold, an upper bound (validation
    images included), so the correction is then slightly too small, and the report says so.
    """
    by_fold: dict[int, float] = {}
    recorded = all(run.n_train for run in runs)
    for run in runs:
        n_train = run.n_train if recorded else n_test - len(run.paths)
        by_fold.setdefault(run.fold, len(run.paths) / n_train)
    basis = (
        "n_train = the real training images of each fold (train's metrics.json)"
        if recorded
        else "n_train not recorded by the runs: counted as every image outside the test fold "
        "(validation included), which makes the correction slightly too small"
    )
    return float(np.mean(list(by_fold.values()))), basis


def analyse(runs: dict[str, list[RunResult]], classes: list[str], cfg: CompareConfig) -> Analysis:
    """All statistics of the report from already paired-checked runs (pure)."""
    n_classes = len(classes)
    conditions = list(runs)
    units = units_of(runs)
    folds = list(dict.fromkeys(f for f, _ in units))
    seeds = list(dict.fromkeys(s for _, s in units))
    ordered = {  # every condition's runs in the order of ``units``
        condition: sorted(cond_runs, key=lambda run: units.index((run.fold, run.seed)))
        for condition, cond_runs in runs.items()
    }
    per_unit = {
        condition: {
            "accuracy": [run.accuracy for run in cond_runs],
            "macro_f1": [run.macro_f1(n_classes) for run in cond_runs],
        }
        for condition, cond_runs in ordered.items()
    }
    per_seed = {  # each seed's runs pooled over the folds: every test image once
        condition: {
            "accuracy": [
                float(np.concatenate([r.correct for r in cond_runs if r.seed == seed]).mean())
                for seed in seeds
            ],
            "macro_f1": [
                macro_f1(sum(r.confusion(n_classes) for r in cond_runs if r.seed == seed))
                for seed in seeds
            ],
        }
        for condition, cond_runs in ordered.items()
    }
    pooled = {
        condition: float(np.concatenate([run.correct for run in cond_runs]).mean())
        for condition, cond_runs in ordered.items()
    }
    summaries = {
        condition: {
            metric: stats.summarise(
                np.array(values), resamples=cfg.bootstrap_resamples, alpha=cfg.alpha, seed=cfg.seed
            )
            for metric, values in per_unit[condition].items()
        }
        for condition in conditions
    }
    first = ordered[conditions[0]]
    fold_sizes = {run.fold: len(run.paths) for run in first}
    n_test = sum(fold_sizes.values())
    ratio, ratio_basis = (None, "") if len(folds) < 2 else train_test_ratio(first, n_test)
    unit_folds = np.array([f for f, _ in units])
    comparisons: dict[str, dict[str, stats.Comparison]] = {}
    mcnemar: dict[str, stats.McNemar] = {}
    power: dict[str, list[stats.Power]] = {}
    verdicts, f1_verdicts = {}, {}
    if "base" in runs:
        base_runs = ordered["base"]
        for condition in conditions:
            if condition == "base":
                continue
            comparisons[condition] = {
                metric: stats.compare_paired(
                    condition,
                    metric,
                    base=np.array(per_unit["base"][metric]),
                    other=np.array(per_unit[condition][metric]),
                    resamples=cfg.bootstrap_resamples,
                    alpha=cfg.alpha,
                    seed=cfg.seed,
                    folds=unit_folds,
                    ratio=ratio,
                )
                for metric in METRICS
            }
            # per-image pairs pooled over folds and seeds, paired by (fold, seed, image):
            # both lists are in unit order, so each image appears once per seed
            mcnemar[condition] = stats.mcnemar(
                np.concatenate([run.correct for run in base_runs]),
                np.concatenate([run.correct for run in ordered[condition]]),
            )
            # what this design could have detected, by the verdict's test, from the spread
            # it observed
            mc = mcnemar[condition]
            diffs = np.array(per_unit[condition]["accuracy"]) - np.array(
                per_unit["base"]["accuracy"]
            )
            power[condition] = [
                stats.paired_t_mde(diffs, alpha=cfg.alpha)
                if ratio is None
                else stats.corrected_t_mde(
                    diffs,
                    unit_folds,
                    ratio=ratio,
                    images_per_unit=size_range(fold_sizes),
                    alpha=cfg.alpha,
                ),
                stats.mcnemar_mde(mc.n_pairs, mc.b + mc.c, alpha=cfg.alpha),
            ]
            verdicts[condition] = stats.verdict(
                comparisons[condition]["accuracy"],
                mcnemar[condition],
                alpha=cfg.alpha,
                n_test_images=n_test,
            )
            f1_verdicts[condition] = stats.verdict(
                comparisons[condition]["macro_f1"], None, alpha=cfg.alpha, n_test_images=n_test
            )
    confusion = {
        condition: sum(run.confusion(n_classes) for run in cond_runs)
        for condition, cond_runs in ordered.items()
    }
    return Analysis(
        conditions=conditions,
        seeds=seeds,
        folds=folds,
        units=units,
        n_test=n_test,
        fold_sizes=fold_sizes,
        ratio=ratio,
        ratio_basis=ratio_basis,
        classes=classes,
        summaries=summaries,
        per_unit=per_unit,
        per_seed=per_seed,
        pooled=pooled,
        comparisons=comparisons,
        mcnemar=mcnemar,
        power=power,
        verdicts=verdicts,
        f1_verdicts=f1_verdicts,
        confusion=confusion,
        alpha=cfg.alpha,
    )


def _num(x) -> float | None:
    """JSON-safe number: NaN/inf become null (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def pixel_metrics(pixels: PixelMatch) -> dict:
    """The pixel-space copy check (every run has it: it needs no extractor)."""
    held_out = pixels.held_out
    return {
        "pixel_ncc_median": _num(np.median(pixels.synthetic) if pixels.synthetic.size else None),
        "pixel_ncc_max": _num(pixels.synthetic.max() if pixels.synthetic.size else None),
        "pixel_ncc_held_out_median": _num(np.median(held_out) if held_out.size else None),
        "pixel_ncc_held_out_max": _num(held_out.max() if held_out.size else None),
        "pixel_above_held_out": pixels.above_held_out,
        "pixel_copies": pixels.copies,
    }


def metrics_dict(analysis: Analysis, quality: QualityReport | None) -> dict:
    """reports/metrics.json: flat enough for `dvc metrics show`, no NaN."""
    out: dict = {
        "n_seeds": len(analysis.seeds),
        "n_folds": analysis.n_folds,
        "n_units": len(analysis.units),
        "n_test_images": analysis.n_test,
        "conditions": {},
    }
    for condition in analysis.conditions:
        # mean, spread and range over the (fold, seed) units: MLflow's compare view shows
        # them on the parent run without opening a child
        entry: dict = {"n_units": len(analysis.units)}
        for metric, summary in analysis.summaries[condition].items():
            values = analysis.per_unit[condition][metric]
            entry[f"{metric}_mean"] = _num(summary.mean)
            entry[f"{metric}_std"] = _num(summary.std)
            entry[f"{metric}_min"] = _num(min(values))
            entry[f"{metric}_max"] = _num(max(values))
            entry[f"{metric}_ci_low"] = _num(summary.ci_low)
            entry[f"{metric}_ci_high"] = _num(summary.ci_high)
        if analysis.n_folds > 1:
            entry["accuracy_pooled"] = _num(analysis.pooled[condition])
        out["conditions"][condition] = entry
    out["vs_base"] = {}
    for condition, comps in analysis.comparisons.items():
        acc, f1, mcn = comps["accuracy"], comps["macro_f1"], analysis.mcnemar[condition]
        decisive = acc.decisive
        entry = {
            "accuracy_diff": _num(acc.diff.mean),
            "accuracy_diff_ci_low": _num(acc.diff.ci_low),
            "accuracy_diff_ci_high": _num(acc.diff.ci_high),
            "macro_f1_diff": _num(f1.diff.mean),
            "p_paired_t": _num(acc.t.p),
            "p_wilcoxon": _num(acc.wilcoxon.p),
            "p_mcnemar": _num(mcn.p),
            "cohens_dz": _num(acc.dz),
            "mcnemar_odds_ratio": _num(mcn.odds_ratio),
            "significant": bool(decisive.p is not None and decisive.p < analysis.alpha),
        }
        if acc.corrected is not None:  # several folds: the verdict's test and its CI
            entry["p_corrected_t"] = _num(acc.corrected.test.p)
            entry["corrected_ci_low"] = _num(acc.corrected.ci_low)
            entry["corrected_ci_high"] = _num(acc.corrected.ci_high)
            entry["mde_corrected_t"] = _num(analysis.power[condition][0].mde)
        else:
            entry["mde_paired_t"] = _num(analysis.power[condition][0].mde)
        entry["mde_mcnemar"] = _num(analysis.power[condition][1].mde)
        out["vs_base"][condition] = entry
    if quality is not None:
        validation = quality.validation
        out["synthetic_quality"] = {
            "extractor": quality.extractor,
            "extractor_valid": validation.valid,
            "extractor_probe_accuracy": _num(validation.probe_accuracy),
            "extractor_test_accuracy": _num(validation.classifier_accuracy),
            **pixel_metrics(quality.pixels),
        }
        if quality.metrics is not None:  # only with a validated extractor
            synthetic = quality.metrics
            per_class = [row for row in synthetic.per_class if row.name != "all"]
            overall = next(row for row in synthetic.per_class if row.name == "all")
            far = synthetic.how_far
            out["synthetic_quality"].update(
                {
                    "fid": _num(overall.fid),
                    "kid": _num(overall.kid),
                    **{f"fid_{row.name}": _num(row.fid) for row in per_class},
                    **{f"kid_{row.name}": _num(row.kid) for row in per_class},
                    "fid_ratio_to_real": _num(far.fid_ratio if far else None),
                    "nearest_ratio_to_real": _num(far.nn_ratio if far else None),
                    "tstr_accuracy": _num(synthetic.tstr_accuracy),
                    "trtr_accuracy": _num(validation.probe_accuracy),
                    "near_copies": len(synthetic.near_copies),
                }
            )
    return out


def flat_metrics(d: dict, prefix: str = "compare") -> dict[str, float]:
    """metrics.json flattened to MLflow metric keys (numbers only)."""
    out = {}
    for name, value in d.items():
        key = f"{prefix}.{name}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, key))
        elif isinstance(value, int | float):  # bool included: significant -> 0/1
            out[key] = float(value)
    return out
