"""The statistics of the comparison, computed once from the paired runs (pure).

:func:`analyse` turns every (condition, seed) result into per-condition summaries with
bootstrap CIs, paired tests of each augmented condition against ``base`` (seeds paired,
images paired for McNemar) and the verdict lines; :func:`metrics_dict` is the
``reports/metrics.json`` view of it. The report, the figures and MLflow read the same
:class:`Analysis`, so no number is computed twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lymphaug.common.config import CompareConfig
from lymphaug.comparison import stats
from lymphaug.comparison.results import RunResult

if TYPE_CHECKING:  # annotations only: synthetic_quality is imported lazily (torch)
    from lymphaug.comparison.synthetic_quality import QualityReport

METRICS = ("accuracy", "macro_f1")


@dataclass(kw_only=True)
class Analysis:
    """Every statistic the report, the plots and metrics.json show, computed once."""

    conditions: list[str]
    seeds: list[int]
    n_test: int
    classes: list[str]
    summaries: dict[str, dict[str, stats.Summary]]  # condition -> metric -> summary
    per_seed: dict[str, dict[str, list[float]]]  # condition -> metric -> values
    comparisons: dict[str, dict[str, stats.Comparison]]  # condition -> metric -> vs base
    mcnemar: dict[str, stats.McNemar]
    power: dict[str, list[stats.Power]]  # condition -> smallest detectable differences
    verdicts: dict[str, str]  # condition -> accuracy verdict line
    f1_verdicts: dict[str, str]
    confusion: dict[str, np.ndarray]  # summed over seeds
    alpha: float


def analyse(runs: dict[str, list[RunResult]], classes: list[str], cfg: CompareConfig) -> Analysis:
    """All statistics of the report from already paired-checked runs (pure)."""
    n_classes = len(classes)
    conditions = list(runs)
    seeds = [run.seed for run in runs[conditions[0]]]
    per_seed = {
        condition: {
            "accuracy": [run.accuracy for run in cond_runs],
            "macro_f1": [run.macro_f1(n_classes) for run in cond_runs],
        }
        for condition, cond_runs in runs.items()
    }
    summaries = {
        condition: {
            metric: stats.summarise(
                np.array(values), resamples=cfg.bootstrap_resamples, alpha=cfg.alpha, seed=cfg.seed
            )
            for metric, values in per_seed[condition].items()
        }
        for condition in conditions
    }
    comparisons: dict[str, dict[str, stats.Comparison]] = {}
    mcnemar: dict[str, stats.McNemar] = {}
    power: dict[str, list[stats.Power]] = {}
    verdicts, f1_verdicts = {}, {}
    n_test = len(runs[conditions[0]][0].paths)
    if "base" in runs:
        base_runs = runs["base"]
        for condition in conditions:
            if condition == "base":
                continue
            comparisons[condition] = {
                metric: stats.compare_paired(
                    condition,
                    metric,
                    base=np.array(per_seed["base"][metric]),
                    other=np.array(per_seed[condition][metric]),
                    resamples=cfg.bootstrap_resamples,
                    alpha=cfg.alpha,
                    seed=cfg.seed,
                )
                for metric in METRICS
            }
            # pooled per-image pairs, paired by (seed, image): runs are in seed order
            mcnemar[condition] = stats.mcnemar(
                np.concatenate([run.correct for run in base_runs]),
                np.concatenate([run.correct for run in runs[condition]]),
            )
            # what this design could have detected, from the spread it observed
            mc = mcnemar[condition]
            power[condition] = [
                stats.paired_t_mde(
                    np.array(per_seed[condition]["accuracy"])
                    - np.array(per_seed["base"]["accuracy"]),
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
        for condition, cond_runs in runs.items()
    }
    return Analysis(
        conditions=conditions,
        seeds=seeds,
        n_test=n_test,
        classes=classes,
        summaries=summaries,
        per_seed=per_seed,
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


def metrics_dict(analysis: Analysis, quality: QualityReport | None) -> dict:
    """reports/metrics.json: flat enough for `dvc metrics show`, no NaN."""
    out: dict = {
        "n_seeds": len(analysis.seeds),
        "n_test_images": analysis.n_test,
        "conditions": {},
    }
    for condition in analysis.conditions:
        entry = {}
        for metric, summary in analysis.summaries[condition].items():
            entry[f"{metric}_mean"] = _num(summary.mean)
            entry[f"{metric}_std"] = _num(summary.std)
            entry[f"{metric}_ci_low"] = _num(summary.ci_low)
            entry[f"{metric}_ci_high"] = _num(summary.ci_high)
        out["conditions"][condition] = entry
    out["vs_base"] = {}
    for condition, comps in analysis.comparisons.items():
        acc, f1, mcn = comps["accuracy"], comps["macro_f1"], analysis.mcnemar[condition]
        out["vs_base"][condition] = {
            "accuracy_diff": _num(acc.diff.mean),
            "accuracy_diff_ci_low": _num(acc.diff.ci_low),
            "accuracy_diff_ci_high": _num(acc.diff.ci_high),
            "macro_f1_diff": _num(f1.diff.mean),
            "p_paired_t": _num(acc.t.p),
            "p_wilcoxon": _num(acc.wilcoxon.p),
            "p_mcnemar": _num(mcn.p),
            "cohens_dz": _num(acc.dz),
            "mcnemar_odds_ratio": _num(mcn.odds_ratio),
            "significant": bool(acc.t.p is not None and acc.t.p < analysis.alpha),
            "mde_paired_t": _num(analysis.power[condition][0].mde),
            "mde_mcnemar": _num(analysis.power[condition][1].mde),
        }
    if quality is not None:
        validation = quality.validation
        out["synthetic_quality"] = {
            "extractor": quality.extractor,
            "extractor_valid": validation.valid,
            "extractor_probe_accuracy": _num(validation.probe_accuracy),
            "extractor_test_accuracy": _num(validation.classifier_accuracy),
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
