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

import numpy as np
import pandas as pd

from lymphaug.common.config import CONDITIONS, CompareConfig, Params
from lymphaug.common.errors import LymphaugError
from lymphaug.common.files import atomic_path, write_text_atomic
from lymphaug.common.paths import Layout
from lymphaug.comparison import figures, results, stats
from lymphaug.comparison.results import RunResult

METRICS = ("accuracy", "macro_f1")
PLOTS_DIR = "compare"  # reports/compare/
QUALITY_PLOTS = ("nearest_pairs.png",)


@dataclass
class Analysis:
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
    n_cls = len(classes)
    conditions = list(runs)
    seeds = [r.seed for r in runs[conditions[0]]]
    per_seed = {
        c: {
            "accuracy": [r.accuracy for r in rs],
            "macro_f1": [r.macro_f1(n_cls) for r in rs],
        }
        for c, rs in runs.items()
    }
    summaries = {
        c: {
            m: stats.summarise(np.array(v), cfg.bootstrap_resamples, cfg.alpha, cfg.seed)
            for m, v in per_seed[c].items()
        }
        for c in conditions
    }
    comparisons: dict[str, dict[str, stats.Comparison]] = {}
    mcn: dict[str, stats.McNemar] = {}
    verdicts, f1_verdicts = {}, {}
    n_test = len(runs[conditions[0]][0].paths)
    if "base" in runs:
        base = runs["base"]
        for c in conditions:
            if c == "base":
                continue
            comparisons[c] = {
                m: stats.compare_paired(
                    c,
                    m,
                    np.array(per_seed["base"][m]),
                    np.array(per_seed[c][m]),
                    cfg.bootstrap_resamples,
                    cfg.alpha,
                    cfg.seed,
                )
                for m in METRICS
            }
            # pooled per-image pairs, paired by (seed, image): runs are in seed order
            mcn[c] = stats.mcnemar(
                np.concatenate([r.correct for r in base]),
                np.concatenate([r.correct for r in runs[c]]),
            )
            verdicts[c] = stats.verdict(comparisons[c]["accuracy"], mcn[c], cfg.alpha, n_test)
            f1_verdicts[c] = stats.verdict(comparisons[c]["macro_f1"], None, cfg.alpha, n_test)
    confusion = {c: sum(r.confusion(n_cls) for r in rs) for c, rs in runs.items()}
    return Analysis(
        conditions,
        seeds,
        n_test,
        classes,
        summaries,
        per_seed,
        comparisons,
        mcn,
        verdicts,
        f1_verdicts,
        confusion,
        cfg.alpha,
    )


def _num(x) -> float | None:
    """JSON-safe number: NaN/inf become null (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def metrics_dict(a: Analysis, q) -> dict:
    """reports/metrics.json: flat enough for `dvc metrics show`, no NaN."""
    out: dict = {"n_seeds": len(a.seeds), "n_test_images": a.n_test, "conditions": {}}
    for c in a.conditions:
        entry = {}
        for m, s in a.summaries[c].items():
            entry[f"{m}_mean"] = _num(s.mean)
            entry[f"{m}_std"] = _num(s.std)
            entry[f"{m}_ci_low"] = _num(s.ci_low)
            entry[f"{m}_ci_high"] = _num(s.ci_high)
        out["conditions"][c] = entry
    out["vs_base"] = {}
    for c, comps in a.comparisons.items():
        acc, f1, mc = comps["accuracy"], comps["macro_f1"], a.mcnemar[c]
        out["vs_base"][c] = {
            "accuracy_diff": _num(acc.diff.mean),
            "accuracy_diff_ci_low": _num(acc.diff.ci_low),
            "accuracy_diff_ci_high": _num(acc.diff.ci_high),
            "macro_f1_diff": _num(f1.diff.mean),
            "p_paired_t": _num(acc.t.p),
            "p_wilcoxon": _num(acc.wilcoxon.p),
            "p_mcnemar": _num(mc.p),
            "cohens_dz": _num(acc.dz),
            "mcnemar_odds_ratio": _num(mc.odds_ratio),
            "significant": bool(acc.t.p is not None and acc.t.p < a.alpha),
        }
    if q is not None:
        overall = next(r for r in q.per_class if r.name == "all")
        out["synthetic_quality"] = {
            "extractor": q.extractor,
            "fid": _num(overall.fid),
            "kid": _num(overall.kid),
            **{f"fid_{r.name}": _num(r.fid) for r in q.per_class if r.name != "all"},
            **{f"kid_{r.name}": _num(r.kid) for r in q.per_class if r.name != "all"},
            "tstr_accuracy": _num(q.tstr_accuracy),
            "trtr_accuracy": _num(q.trtr_accuracy),
            "near_copies": len(q.near_copies),
        }
    return out


def flat_metrics(d: dict, prefix: str = "compare") -> dict[str, float]:
    """metrics.json flattened to MLflow metric keys (numbers only)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}"
        if isinstance(v, dict):
            out.update(flat_metrics(v, key))
        elif isinstance(v, int | float):  # bool included: significant -> 0/1
            out[key] = float(v)
    return out


def val_curve_table(runs: dict[str, list[RunResult]]) -> pd.DataFrame:
    """Mean validation accuracy per epoch and condition (the `dvc plots` line plot)."""
    cols = {}
    for c, rs in runs.items():
        rs = [r for r in rs if r.epochs.size]
        if rs:
            n = min(r.epochs.size for r in rs)
            cols[c] = pd.Series(
                np.mean([r.val_accuracy[:n] for r in rs], 0), index=rs[0].epochs[:n]
            )
    df = pd.DataFrame(cols).round(6)
    df.index.name = "epoch"
    return df.reset_index()


def write_plots(runs, a: Analysis, folder: Path, layout: Layout) -> None:
    figures.val_accuracy_plot(runs, folder / "val_accuracy.png")
    acc = {c: a.summaries[c]["accuracy"] for c in a.conditions}
    figures.test_accuracy_plot(runs, acc, folder / "test_accuracy.png", a.alpha)
    figures.confusion_plot(a.confusion, a.classes, folder / "confusion_matrices.png", len(a.seeds))
    val_curve_table(runs).to_csv(folder / "val_accuracy.csv", index=False, lineterminator="\n")
    # the data of dvc.yaml's top-level plots: every run's curves, predictions per condition
    curves = results.curves_table(layout, list(runs), list(a.seeds))
    curves.to_csv(folder / "curves.csv", index=False, lineterminator="\n", float_format="%.6f")
    (folder / "predictions").mkdir()
    for condition, condition_runs in runs.items():
        table = results.pooled_predictions(condition_runs, a.classes)
        table.to_csv(folder / "predictions" / f"{condition}.csv", index=False, lineterminator="\n")


def _thumb(path: Path, size: int = 120) -> np.ndarray:
    """A small copy for the nearest-pairs sheet (drawing full-size images is slow)."""
    from PIL import Image

    from lymphaug.common.images import read_rgb

    img = Image.fromarray(read_rgb(path))
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img)


def quality_plots(q, folder: Path) -> None:
    """The closest synthetic/training pairs. Real vs synthetic per class is the generate
    stage's contact sheet (reports/synthetic_contact_sheet.png), which the report embeds."""
    pairs = [(_thumb(s), _thumb(r), cap) for s, r, cap in q.closest]
    figures.pairs_sheet(pairs, folder / "nearest_pairs.png")
    q.distances.to_csv(folder / "nearest_training.csv", index=False, lineterminator="\n")


def produce(params: Params, layout: Layout) -> tuple[Analysis, dict]:
    """Everything but the MLflow logging: read, analyse, write report, plots, metrics."""
    from lymphaug.comparison import report

    cfg = params.compare
    classes = list(params.classes)
    runs = results.read_all(layout, list(CONDITIONS), list(params.train.seeds), classes)
    a = analyse(runs, classes, cfg)
    q, q_skipped = None, ""
    try:
        from lymphaug.comparison.synthetic_quality import assess

        q = assess(params, layout)
    except LymphaugError as err:
        q_skipped = str(err)
    plot_dir = layout.reports / PLOTS_DIR
    with atomic_path(plot_dir) as tmp:
        tmp.mkdir(parents=True)
        write_plots(runs, a, tmp, layout)
        if q is not None:
            quality_plots(q, tmp)
        else:  # every declared output exists, saying why it is empty
            for name in QUALITY_PLOTS:
                figures.placeholder(
                    tmp / name, f"Synthetic-image quality not assessed: {q_skipped}"
                )
            (tmp / "nearest_training.csv").write_text(
                "synthetic,class,nearest_training,cosine_distance,near_copy\n"
            )
    metrics = metrics_dict(a, q)
    text = report.render(a, q, q_skipped, params, layout, plot_dir)
    write_text_atomic(layout.reports / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(layout.reports / "report.md", text)
    return a, metrics


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
    from lymphaug.common import tracking

    # cheap checks first: missing runs or mismatched test sets fail before anything else
    results.read_all(layout, list(CONDITIONS), list(params.train.seeds), list(params.classes))
    client, exp_id = tracking.setup(params.mlflow, layout.root)  # fails fast if down
    a, metrics = produce(params, layout)
    parent = tracking.parent_run_id(client, exp_id, tracking.pipeline_key(layout.root))
    log_to_parent(client, parent, layout, metrics)
    print(
        f"compare: {len(a.seeds)} seed(s) x {a.n_test} test images; report at "
        f"{layout.reports / 'report.md'} (MLflow parent run {parent})"
    )
    for c, line in a.verdicts.items():
        print(f"  {c} vs base: {line}")
    return 0
