"""Reading the training stage's per-(condition, seed) outputs for the comparison.

Contract (written by ``lymphaug train`` under ``reports/train/<condition>/seed_<n>/``):

- ``predictions.csv``: path, class, label, predicted, predicted_class, prob_<class>...
  (one row per test image; ``label``/``predicted`` are class indices). Accuracy,
  macro-F1 and the confusion matrix are recomputed from these rows, so every number
  in the report traces back to per-image predictions.
- ``history.csv``: epoch, train_loss, train_acc, val_loss, val_acc (fractions).
- ``metrics.json``: read for the best epoch and n_train only (optional keys).

Pairing is the point of the comparison, so any difference in the set of test
images between conditions or seeds is refused rather than silently intersected.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lymphaug.common.errors import DataError
from lymphaug.common.metrics import confusion_matrix, macro_f1
from lymphaug.common.paths import Layout


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """One (condition, seed) training run as the comparison needs it: per-image outcomes,
    so every score is recomputed here rather than trusted from the run's own summary."""

    condition: str
    seed: int
    paths: tuple[str, ...]  # test images, sorted
    labels: np.ndarray  # int, aligned with paths
    predicted: np.ndarray  # int, aligned with paths
    epochs: np.ndarray
    val_accuracy: np.ndarray  # fractions
    best_epoch: int | None
    fold: int = 0  # cross-validation fold (issue 14): runs pair by (fold, seed)
    n_train: int | None = None  # real training images (metrics.json): the corrected t's n_train

    @property
    def correct(self) -> np.ndarray:
        """Per-image outcome, aligned with ``paths``: what McNemar pairs across conditions."""
        return self.labels == self.predicted

    @property
    def accuracy(self) -> float:
        """Test accuracy recomputed from the per-image predictions."""
        return float(self.correct.mean())

    @property
    def best_val_accuracy(self) -> float | None:
        """Validation accuracy at the chosen epoch: what picks the registry's best seed."""
        if self.best_epoch is not None and self.best_epoch in self.epochs:
            return float(self.val_accuracy[list(self.epochs).index(self.best_epoch)])
        return float(self.val_accuracy.max()) if self.val_accuracy.size else None

    def confusion(self, n_classes: int) -> np.ndarray:
        """Rows: true class, columns: predicted (shared with the training stage's metrics)."""
        return confusion_matrix(self.labels, self.predicted, n_classes)

    def macro_f1(self, n_classes: int) -> float:
        """Macro-F1 from the same confusion matrix, so it agrees with the training stage."""
        return macro_f1(self.confusion(n_classes))


def _as_index(values: pd.Series, classes: list[str], *, source: Path, column: str) -> np.ndarray:
    out = pd.to_numeric(values, errors="coerce").to_numpy()
    if (
        np.isnan(out).any()
        or not np.all(out == np.round(out))
        or out.min() < 0
        or out.max() >= len(classes)
    ):
        raise DataError(f"{source}: column {column} is not a class index 0..{len(classes) - 1}")
    return out.astype(np.int64)


def _relative(path: str, root: Path) -> str:
    """Image paths relative to the repository root, POSIX, so two runs compare equal."""
    p = Path(path)
    if p.is_absolute():
        with contextlib.suppress(ValueError):
            p = p.relative_to(root.resolve())
    return p.as_posix()


def read_run(layout: Layout, condition: str, seed: int, classes: list[str]) -> RunResult:
    """One run's outputs, checked and sorted by image path so runs can be paired by row."""
    folder = layout.train_report(condition, seed)
    pred_path = folder / "predictions.csv"
    if not pred_path.is_file():
        raise DataError(
            f"condition {condition!r}, seed {seed}: no training results at {pred_path} "
            f"(run `lymphaug train --condition {condition} --seed {seed}` or `dvc repro`)"
        )
    try:
        pred = pd.read_csv(pred_path, dtype={"path": str, "class": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{pred_path}: not a readable CSV ({err})") from None
    missing = [c for c in ("path", "label", "predicted") if c not in pred.columns]
    if missing or pred.empty:
        raise DataError(f"{pred_path}: missing column(s) {missing} or no rows")
    pred["path"] = [_relative(p, layout.root) for p in pred["path"]]
    if pred["path"].duplicated().any():
        dup = pred.loc[pred["path"].duplicated(), "path"].iloc[0]
        raise DataError(f"{pred_path}: test image {dup} appears more than once")
    pred = pred.sort_values("path", kind="stable").reset_index(drop=True)
    labels = _as_index(pred["label"], classes, source=pred_path, column="label")
    predicted = _as_index(pred["predicted"], classes, source=pred_path, column="predicted")

    epochs, val_acc = _read_history(folder / "history.csv")
    best_epoch = n_train = None
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{metrics_path}: not valid JSON ({err})") from None
        value = metrics.get("best_epoch") if isinstance(metrics, dict) else None
        best_epoch = int(value) if isinstance(value, int | float) else None
        value = metrics.get("n_train") if isinstance(metrics, dict) else None
        n_train = int(value) if isinstance(value, int | float) else None
    return RunResult(
        condition=condition,
        seed=seed,
        paths=tuple(pred["path"]),
        labels=labels,
        predicted=predicted,
        epochs=epochs,
        val_accuracy=val_acc,
        best_epoch=best_epoch,
        n_train=n_train,
    )


def _read_history(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, validation accuracy as fractions); empty arrays when there is no history."""
    if not path.is_file():
        return np.zeros(0, np.int64), np.zeros(0)
    try:
        hist = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None
    if not {"epoch", "val_acc"} <= set(hist.columns):
        raise DataError(f"{path}: needs columns epoch and val_acc")
    return hist["epoch"].to_numpy(dtype=np.int64), hist["val_acc"].to_numpy(dtype=np.float64)


def curves_table(layout: Layout, conditions: list[str], seeds: list[int]) -> pd.DataFrame:
    """Every run's per-epoch history in one long table (``run`` = "<condition> seed <n>").

    ``dvc plots`` draws it with one line per run, coloured by condition, for whatever
    conditions and seeds params list (dvc.yaml names this one file, not every run's).
    """
    frames = []
    for condition in conditions:
        for seed in seeds:
            path = layout.train_report(condition, seed) / "history.csv"
            if not path.is_file():
                continue
            try:
                hist = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
                raise DataError(f"{path}: not a readable CSV ({err})") from None
            hist.insert(0, "run", f"{condition} seed {seed}")
            hist.insert(1, "condition", condition)
            hist.insert(2, "seed", seed)
            frames.append(hist)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run"])


def pooled_predictions(runs: list[RunResult], classes: list[str]) -> pd.DataFrame:
    """One condition's test predictions over all its seeds: a confusion plot pools them."""
    rows = [
        {
            "seed": run.seed,
            "path": path,
            "class": classes[label],
            "predicted_class": classes[predicted],
        }
        for run in runs
        for path, label, predicted in zip(run.paths, run.labels, run.predicted, strict=True)
    ]
    return pd.DataFrame(rows, columns=["seed", "path", "class", "predicted_class"])


def read_all(
    layout: Layout, conditions: list[str], seeds: list[int], classes: list[str]
) -> dict[str, list[RunResult]]:
    """Every (condition, seed) result; refuses missing runs and mismatched test sets."""
    missing = [
        f"{condition} seed {seed} ({layout.train_report(condition, seed) / 'predictions.csv'})"
        for condition in conditions
        for seed in seeds
        if not (layout.train_report(condition, seed) / "predictions.csv").is_file()
    ]
    if missing:
        raise DataError(
            f"missing training results for {len(missing)} run(s): {'; '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''} (run `dvc repro` so `lymphaug train` "
            "writes them)"
        )
    runs = {
        condition: [read_run(layout, condition, seed, classes) for seed in seeds]
        for condition in conditions
    }
    check_pairing(runs)
    return runs


def check_pairing(runs: dict[str, list[RunResult]]) -> None:
    """Every run must score the same test images with the same labels."""
    all_runs = [run for cond_runs in runs.values() for run in cond_runs]
    ref = all_runs[0]
    for run in all_runs[1:]:
        if run.paths != ref.paths:
            only_ref = sorted(set(ref.paths) - set(run.paths))
            only_run = sorted(set(run.paths) - set(ref.paths))
            raise DataError(
                f"{run.condition} seed {run.seed} was tested on different images than "
                f"{ref.condition} seed {ref.seed} ({len(run.paths)} vs {len(ref.paths)} "
                f"images; only in {ref.condition}/{ref.seed}: {only_ref[:3]}, only in "
                f"{run.condition}/{run.seed}: {only_run[:3]}): paired tests would pair the "
                "wrong images; retrain both on the same split"
            )
        if not np.array_equal(run.labels, ref.labels):
            first = int(np.flatnonzero(run.labels != ref.labels)[0])
            raise DataError(
                f"{run.condition} seed {run.seed} labels test image {run.paths[first]} "
                f"differently from {ref.condition} seed {ref.seed}: the runs used different "
                "class lists or data"
            )
