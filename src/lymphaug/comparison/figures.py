"""The comparison's figures (matplotlib, Agg, no timestamps: same inputs, same bytes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lymphaug.common.files import atomic_path
from lymphaug.comparison.results import RunResult
from lymphaug.comparison.stats import Summary

COLOURS = {"base": "#4d4d4d", "dct": "#1f77b4", "synthetic": "#d62728"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "lymphaug"
    return plt


def _save(fig, path: Path, dpi: int = 100) -> None:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)


def _colour(condition: str, i: int) -> str:
    """A condition keeps its colour in every figure; unknown ones take the next free one."""
    return COLOURS.get(condition, f"C{i + 3}")


def _several_folds(runs: dict[str, list[RunResult]]) -> bool:
    return len({r.fold for cond_runs in runs.values() for r in cond_runs}) > 1


def val_accuracy_plot(runs: dict[str, list[RunResult]], path: Path) -> None:
    """Validation accuracy per epoch: mean over seeds (with several folds, over (fold, seed)
    units), min-max band, thin line per run."""
    plt = _plt()
    over = "(fold, seed) units" if _several_folds(runs) else "seeds"
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (cond, cond_runs) in enumerate(runs.items()):
        with_history = [r for r in cond_runs if r.epochs.size]
        if not with_history:
            continue
        n_epochs = min(r.epochs.size for r in with_history)  # the epochs every seed has
        epochs = with_history[0].epochs[:n_epochs]
        acc = np.stack([r.val_accuracy[:n_epochs] for r in with_history]) * 100
        colour = _colour(cond, i)
        for row in acc:
            ax.plot(epochs, row, color=colour, alpha=0.25, linewidth=0.8)
        ax.fill_between(epochs, acc.min(0), acc.max(0), color=colour, alpha=0.15, linewidth=0)
        ax.plot(epochs, acc.mean(0), color=colour, linewidth=2, marker="o", label=f"{cond} (mean)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Validation accuracy per epoch (band: min-max over {over})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def unit_label(run: RunResult, *, several_folds: bool) -> str:
    """A point's label: ``s<seed>``, or ``f<fold>s<seed>`` when seeds repeat across folds."""
    return f"f{run.fold}s{run.seed}" if several_folds else f"s{run.seed}"


def test_accuracy_plot(
    runs: dict[str, list[RunResult]], summaries: dict[str, Summary], path: Path, *, alpha: float
) -> None:
    """Test accuracy per seed (points; with several folds, per (fold, seed) unit) with the
    mean and its bootstrap CI per condition."""
    plt = _plt()
    folds = _several_folds(runs)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (cond, cond_runs) in enumerate(runs.items()):
        colour = _colour(cond, i)
        acc = np.array([r.accuracy for r in cond_runs]) * 100
        jitter = np.linspace(-0.12, 0.12, len(acc)) if len(acc) > 1 else np.zeros(1)
        ax.scatter(i + jitter, acc, color=colour, alpha=0.6, zorder=3)
        for x, run, run_acc in zip(i + jitter, cond_runs, acc, strict=True):
            ax.annotate(
                unit_label(run, several_folds=folds),
                (x, run_acc),
                textcoords="offset points",
                xytext=(4, 0),
                fontsize=7,
                color=colour,
            )
        summary = summaries[cond]
        ax.errorbar(
            i + 0.3,
            summary.mean * 100,
            yerr=[
                [100 * (summary.mean - summary.ci_low)],
                [100 * (summary.ci_high - summary.mean)],
            ],
            fmt="D",
            color=colour,
            capsize=5,
            zorder=4,
        )
    ax.set_xticks(range(len(runs)), list(runs))
    ax.set_ylabel("test accuracy (%)")
    per = "(fold, seed) unit" if folds else "seed"
    ax.set_title(f"Test accuracy per {per}; diamond: mean with {100 * (1 - alpha):g}% bootstrap CI")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, path)


def confusion_plot(
    matrices: dict[str, np.ndarray], classes: list[str], path: Path, *, n_seeds: int
) -> None:
    """Confusion matrices summed over seeds, one panel per condition (rows: true class)."""
    plt = _plt()
    n_panels = len(matrices)
    fig, axes = plt.subplots(1, n_panels, figsize=(3.4 * n_panels, 3.4), squeeze=False)
    for ax, (cond, matrix) in zip(axes[0], matrices.items(), strict=True):
        ax.imshow(matrix, cmap="Blues", vmin=0)
        for (true_idx, pred_idx), count in np.ndenumerate(matrix):
            ax.text(
                pred_idx,
                true_idx,
                str(count),
                ha="center",
                va="center",
                color="white" if count > matrix.max() / 2 else "black",
            )
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{cond} (sum of {n_seeds} seed{'s' if n_seeds != 1 else ''})")
    fig.tight_layout()
    _save(fig, path)


def pairs_sheet(pairs: list[tuple[np.ndarray, np.ndarray, str]], path: Path) -> None:
    """Synthetic image beside its nearest training image, one row per pair, captioned."""
    plt = _plt()
    n_rows = max(1, len(pairs))
    fig, axes = plt.subplots(n_rows, 2, figsize=(4.2, 2.0 * n_rows), squeeze=False)
    for row, (synth, real, caption) in zip(axes, pairs, strict=False):
        for ax, img, title in ((row[0], synth, caption), (row[1], real, "nearest training")):
            ax.imshow(img)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    for row in axes[len(pairs) :]:
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    _save(fig, path, dpi=72)


def placeholder(path: Path, text: str) -> None:
    """A figure that says why the real one is missing (DVC expects every declared plot)."""
    import textwrap

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 2.0))
    ax.axis("off")
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(text, 80)), ha="center", va="center", fontsize=9)
    _save(fig, path)
