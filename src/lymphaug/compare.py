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
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lymphaug.common.config import CONDITIONS, Params
from lymphaug.common.errors import LymphaugError
from lymphaug.common.files import atomic_path, write_text_atomic
from lymphaug.common.paths import Layout
from lymphaug.comparison import figures, results
from lymphaug.comparison.analysis import Analysis, analyse, flat_metrics, metrics_dict
from lymphaug.comparison.results import RunResult

if TYPE_CHECKING:  # annotations only: synthetic_quality is imported lazily (torch)
    from lymphaug.comparison.synthetic_quality import QualityReport, SyntheticMetrics

PLOTS_DIR = "compare"  # reports/compare/
QUALITY_PLOTS = ("nearest_pairs.png",)


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
    folds = sorted({run.fold for cond_runs in runs.values() for run in cond_runs})
    curves = results.curves_table(layout, list(runs), folds, list(analysis.seeds))
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


def quality_plots(quality: SyntheticMetrics, folder: Path) -> None:
    """The closest synthetic/training pairs. Real vs synthetic per class is the generate
    stage's contact sheet (reports/folds/fold_<f>/synthetic_contact_sheet.png), which the
    report embeds."""
    pairs = [
        (_thumb(synthetic), _thumb(training), caption)
        for synthetic, training, caption in quality.closest
    ]
    figures.pairs_sheet(pairs, folder / "nearest_pairs.png")
    quality.distances.to_csv(folder / "nearest_training.csv", index=False, lineterminator="\n")


def not_assessed(quality: QualityReport | None, skipped: str) -> str:
    """Why the synthetic metrics are absent ('' when they are there)."""
    if quality is None:
        return f"Synthetic-image quality not assessed: {skipped}"
    if quality.metrics is None:
        return "Image metrics cannot be computed with this feature extractor: " + "; ".join(
            f"{c.name}: {c.measured}" for c in quality.validation.failures
        )
    return ""


def read_runs(params: Params, layout: Layout) -> dict[str, list[RunResult]]:
    """Every condition's runs over params' folds x seeds, checked (results.read_all)."""
    return results.read_all(
        layout,
        list(CONDITIONS),
        list(params.split.folds),
        list(params.train.seeds),
        list(params.classes),
    )


def produce(params: Params, layout: Layout) -> tuple[Analysis, dict]:
    """Everything but the MLflow logging: read, analyse, write report, plots, metrics."""
    from lymphaug.comparison import report

    cfg = params.compare
    classes = list(params.classes)
    runs = read_runs(params, layout)
    analysis = analyse(runs, classes, cfg)
    # the images of the first fold run: its synthetic set, training images and base model
    layout = layout.for_fold(params.split.folds[0])
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
        why_not = not_assessed(quality, quality_skipped)
        if not why_not:
            quality_plots(quality.metrics, tmp_dir)
        else:  # every declared output exists, saying why it is empty
            for name in QUALITY_PLOTS:
                figures.placeholder(tmp_dir / name, why_not)
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


def log_to_parent(
    client, parent: str, layout: Layout, metrics: dict, note: str, design: dict[str, str]
) -> None:
    """Summary metrics on the pipeline's parent run (per condition: mean, std, min, max over
    the units and their number, so MLflow's compare view shows the spread without opening a
    child); the design as its params; the report (markdown, and HTML with its figures
    embedded: MLflow shows markdown as text but renders HTML), metrics and plots as its
    artifacts; ``note`` as its description, the first thing its page shows."""
    from mlflow.entities import Metric, Param

    from lymphaug.comparison import report_html

    now = int(time.time() * 1000)
    client.log_batch(
        parent,
        metrics=[
            Metric(key, value, now, 0) for key, value in sorted(flat_metrics(metrics).items())
        ],
    )
    # params cannot change once logged: a rerun under the same parent has the same design
    logged = client.get_run(parent).data.params
    new = [Param(key, value) for key, value in design.items() if key not in logged]
    if new:
        client.log_batch(parent, params=new)
    report_md = layout.reports / "report.md"
    client.log_artifact(parent, str(report_md), "compare")
    page = report_html.render(
        report_md.read_text(), base=layout.reports, title="lymphaug comparison report"
    )
    client.log_text(parent, page, "compare/report.html")
    client.log_artifact(parent, str(layout.reports / "metrics.json"), "compare")
    client.log_artifacts(parent, str(layout.reports / PLOTS_DIR), "compare/plots")
    contact = layout.fold_reports / "synthetic_contact_sheet.png"  # the first fold's
    if contact.is_file():
        client.log_artifact(parent, str(contact), "compare/plots")
    client.set_tag(parent, "mlflow.note.content", note)


def parent_note(analysis: Analysis, best: dict[str, str], quality: str) -> str:
    """The parent run's description (markdown): the verdicts, and where the report is."""
    lines = [
        f"**Comparison**: {analysis.design}. "
        "The whole report, figures included: Artifacts, `compare/report.html`.",
        "",
        *(f"- {condition} vs base: {line}" for condition, line in analysis.verdicts.items()),
        f"- synthetic images: {quality}",
        "",
        "Best seed per condition (registry alias): " + "; ".join(best.values()),
    ]
    return "\n".join(lines)


def mark_best_models(client, runs: dict[str, list[RunResult]], layout: Layout) -> dict[str, str]:
    """Alias ``best`` on each condition's best seed (validation accuracy) in the registry.

    The versions are found by the md5 of the weights in models/, so the alias goes to the
    model these results came from even when the training runs logged under another
    pipeline key (an unchanged stage DVC did not rerun). Returns condition -> a line.
    """
    from lymphaug.common import registry
    from lymphaug.common.files import md5_file

    lines = {}
    for condition, cond_runs in runs.items():
        # keyed by (fold, seed): a tie goes to the lowest fold, then seed
        weights = {
            (r.fold, r.seed): layout.for_fold(r.fold).classifier(condition, r.seed) / "model.pt"
            for r in cond_runs
        }
        md5s = {unit: md5_file(path) for unit, path in weights.items() if path.is_file()}
        scores = {
            (r.fold, r.seed): r.best_val_accuracy
            for r in cond_runs
            if r.best_val_accuracy is not None
        }
        version = registry.mark_best(client, condition=condition, scores=scores, md5s=md5s)
        name = registry.registered_name(condition)
        lines[condition] = (
            f"{name}@{registry.BEST_ALIAS} = version {version.version} "
            f"(fold {version.tags.get('fold', '?')} seed {version.tags.get('seed', '?')})"
            if version is not None
            else f"{name}: no registry version holds these weights, alias not set"
        )
    return lines


def run(params: Params, layout: Layout, args: argparse.Namespace | None = None) -> int:
    """The ``compare`` stage: check inputs and MLflow first, then report and log the results."""
    from lymphaug.common import tracking

    # cheap checks first: missing runs or mismatched test sets fail before anything else
    runs = read_runs(params, layout)
    client, exp_id = tracking.setup(params.mlflow, layout.root)  # fails fast if down
    analysis, metrics = produce(params, layout)
    uri = tracking.tracking_uri(params.mlflow, layout.root)
    with tracking.talking_to(uri, "logging the comparison"):
        key = tracking.pipeline_key(layout.root)
        parent = tracking.parent_run_id(client, exp_id, key, layout.root)
        best = mark_best_models(client, runs, layout)
        quality = quality_summary(metrics.get("synthetic_quality"))
        note = parent_note(analysis, best, quality)
        log_to_parent(
            client,
            parent,
            layout.for_fold(params.split.folds[0]),
            metrics,
            note,
            analysis.design_params(),
        )
        tracking.extend_parent(client, parent)
    print(
        f"compare: {analysis.design}; report at "
        f"{layout.reports / 'report.md'} (MLflow parent run {parent})"
    )
    for condition, line in analysis.verdicts.items():
        print(f"  {condition} vs base: {line}")
    print(f"  synthetic images: {quality}")
    print("  best seeds: " + "; ".join(best.values()))
    return 0


def quality_summary(quality: dict | None) -> str:
    """The synthetic section in one line, from metrics.json's view of it."""
    if quality is None:
        return "not assessed (see the report)"
    pixels = f"pixel copies {quality['pixel_copies']}"
    if quality["pixel_above_held_out"] is not None:
        pixels += f" ({quality['pixel_above_held_out']} nearer a training image than real ones)"
    if not quality["extractor_valid"]:
        return (
            f"{pixels}; no feature metrics: the feature extractor ({quality['extractor']}) "
            "fails its check on real images (see the report)"
        )
    ratio = quality["fid_ratio_to_real"]
    far = "" if ratio is None else f"FID {ratio:.1f}x that of a real set of the same size, "
    return f"{far}{quality['near_copies']} near copies; {pixels}"
