"""``lymphaug compare``: does augmentation help, and with what confidence.

Reads every (condition, seed) result of ``lymphaug train``, computes per-condition
summaries with bootstrap CIs, paired tests of each augmented condition against
``base`` (seeds paired, and images paired for McNemar), the synthetic images'
quality, and writes ``reports/report.md`` + ``reports/compare/*.png`` +
``reports/metrics.json``, all also logged to the MLflow parent run.

The study's own verdict was "likely random variation" from one split and one
seed; this stage makes the uncertainty explicit, including when there is too
little data for any test to say anything (fewer than two seeds, or too few pairs
for Wilcoxon to ever reach the significance level).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lymphaug.common.config import CONDITIONS, CompareConfig, Params
from lymphaug.common.errors import LymphaugError
from lymphaug.common.files import atomic_path, write_text_atomic
from lymphaug.common.paths import Layout
from lymphaug.comparison import figures, results, stats
from lymphaug.comparison.results import RunResult

if TYPE_CHECKING:  # annotations only: synthetic_quality is imported lazily (torch)
    from lymphaug.comparison.synthetic_quality import QualityReport

METRICS = ("accuracy", "macro_f1")
PLOTS_DIR = "compare"  # reports/compare/
QUALITY_PLOTS = ("nearest_pairs.png",)


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
        }
    if quality is not None:
        per_class = [row for row in quality.per_class if row.name != "all"]
        overall = next(row for row in quality.per_class if row.name == "all")
        out["synthetic_quality"] = {
            "extractor": quality.extractor,
            "fid": _num(overall.fid),
            "kid": _num(overall.kid),
            **{f"fid_{row.name}": _num(row.fid) for row in per_class},
            **{f"kid_{row.name}": _num(row.kid) for row in per_class},
            "tstr_accuracy": _num(quality.tstr_accuracy),
            "trtr_accuracy": _num(quality.trtr_accuracy),
            "near_copies": len(quality.near_copies),
        }
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


def val_curve_table(runs: dict[str, list[RunResult]]) -> pd.DataFrame:
    """Mean validation accuracy per epoch and condition (the `dvc plots` line plot)."""
    cols = {}
    for condition, cond_runs in runs.items():
        with_history = [run for run in cond_runs if run.epochs.size]
        if with_history:
            n_epochs = min(run.epochs.size for run in with_history)  # the epochs every seed has
            cols[condition] = pd.Series(
                np.mean([run.val_accuracy[:n_epochs] for run in with_history], 0),
                index=with_history[0].epochs[:n_epochs],
            )
    df = pd.DataFrame(cols).round(6)
    df.index.name = "epoch"
    return df.reset_index()


def write_plots(
    runs: dict[str, list[RunResult]], analysis: Analysis, folder: Path, *, layout: Layout
) -> None:
    """The report's figures and the CSVs dvc.yaml's plots read, all into ``folder``."""
    figures.val_accuracy_plot(runs, folder / "val_accuracy.png")
    acc = {
        condition: analysis.summaries[condition]["accuracy"] for condition in analysis.conditions
    }
    figures.test_accuracy_plot(runs, acc, folder / "test_accuracy.png", alpha=analysis.alpha)
    figures.confusion_plot(
        analysis.confusion,
        analysis.classes,
        folder / "confusion_matrices.png",
        n_seeds=len(analysis.seeds),
    )
    val_curve_table(runs).to_csv(folder / "val_accuracy.csv", index=False, lineterminator="\n")
    # the data of dvc.yaml's top-level plots: every run's curves, predictions per condition
    curves = results.curves_table(layout, list(runs), list(analysis.seeds))
    curves.to_csv(folder / "curves.csv", index=False, lineterminator="\n", float_format="%.6f")
    (folder / "predictions").mkdir()
    for condition, condition_runs in runs.items():
        table = results.pooled_predictions(condition_runs, analysis.classes)
        table.to_csv(folder / "predictions" / f"{condition}.csv", index=False, lineterminator="\n")


def _thumb(path: Path, size: int = 120) -> np.ndarray:
    """A small copy for the nearest-pairs sheet (drawing full-size images is slow)."""
    from PIL import Image

    from lymphaug.common.images import read_rgb

    img = Image.fromarray(read_rgb(path))
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img)


def quality_plots(quality: QualityReport, folder: Path) -> None:
    """The closest synthetic/training pairs. Real vs synthetic per class is the generate
    stage's contact sheet (reports/synthetic_contact_sheet.png), which the report embeds."""
    pairs = [
        (_thumb(synthetic), _thumb(training), caption)
        for synthetic, training, caption in quality.closest
    ]
    figures.pairs_sheet(pairs, folder / "nearest_pairs.png")
    quality.distances.to_csv(folder / "nearest_training.csv", index=False, lineterminator="\n")


def produce(params: Params, layout: Layout) -> tuple[Analysis, dict]:
    """Everything but the MLflow logging: read, analyse, write report, plots, metrics."""
    from lymphaug.comparison import report

    cfg = params.compare
    classes = list(params.classes)
    runs = results.read_all(layout, list(CONDITIONS), list(params.train.seeds), classes)
    analysis = analyse(runs, classes, cfg)
    quality, quality_skipped = None, ""  # the report says why when quality is None
    try:
        from lymphaug.comparison.synthetic_quality import assess

        quality = assess(params, layout)
    except LymphaugError as err:
        quality_skipped = str(err)
    plot_dir = layout.reports / PLOTS_DIR
    with atomic_path(plot_dir) as tmp_dir:
        tmp_dir.mkdir(parents=True)
        write_plots(runs, analysis, tmp_dir, layout=layout)
        if quality is not None:
            quality_plots(quality, tmp_dir)
        else:  # every declared output exists, saying why it is empty
            for name in QUALITY_PLOTS:
                figures.placeholder(
                    tmp_dir / name, f"Synthetic-image quality not assessed: {quality_skipped}"
                )
            (tmp_dir / "nearest_training.csv").write_text(
                "synthetic,class,nearest_training,cosine_distance,near_copy\n"
            )
    metrics = metrics_dict(analysis, quality)
    text = report.render(
        analysis,
        quality,
        quality_skipped=quality_skipped,
        params=params,
        layout=layout,
    )
    write_text_atomic(layout.reports / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(layout.reports / "report.md", text)
    return analysis, metrics


def log_to_parent(client, parent: str, layout: Layout, metrics: dict) -> None:
    """Summary metrics on the pipeline's parent run; report and plots as its artifacts."""
    for key, value in sorted(flat_metrics(metrics).items()):
        client.log_metric(parent, key, value)
    client.log_artifact(parent, str(layout.reports / "report.md"), "compare")
    client.log_artifact(parent, str(layout.reports / "metrics.json"), "compare")
    client.log_artifacts(parent, str(layout.reports / PLOTS_DIR), "compare/plots")
    contact = layout.reports / "synthetic_contact_sheet.png"
    if contact.is_file():
        client.log_artifact(parent, str(contact), "compare/plots")


def run(params: Params, layout: Layout, args: argparse.Namespace | None = None) -> int:
    """The ``compare`` stage: check inputs and MLflow first, then report and log the results."""
    from lymphaug.common import tracking

    # cheap checks first: missing runs or mismatched test sets fail before anything else
    results.read_all(layout, list(CONDITIONS), list(params.train.seeds), list(params.classes))
    client, exp_id = tracking.setup(params.mlflow, layout.root)  # fails fast if down
    analysis, metrics = produce(params, layout)
    parent = tracking.parent_run_id(client, exp_id, tracking.pipeline_key(layout.root))
    log_to_parent(client, parent, layout, metrics)
    print(
        f"compare: {len(analysis.seeds)} seed(s) x {analysis.n_test} test images; report at "
        f"{layout.reports / 'report.md'} (MLflow parent run {parent})"
    )
    for condition, line in analysis.verdicts.items():
        print(f"  {condition} vs base: {line}")
    return 0
