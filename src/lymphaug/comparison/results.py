"""Reading the training stage's per-(condition, fold, seed) outputs for the comparison.

Contract (written by ``lymphaug train`` under
``reports/train/<condition>/fold_<f>/seed_<n>/``):

- ``predictions.csv``: path, class, label, predicted, predicted_class, prob_<class>...
  (one row per test image; ``label``/``predicted`` are class indices). Accuracy,
  macro-F1 and the confusion matrix are recomputed from these rows, so every number
  in the report traces back to per-image predictions.
- ``history.csv``: epoch, train_loss, train_acc, val_loss, val_acc (fractions).
- ``metrics.json``: read for the best epoch, n_train, the fold and the sha256 of the fold's
  split file (optional keys: older runs lack them).

Pairing is the point of the comparison, so any difference in the set of test
images between conditions or seeds of one fold is refused rather than silently
intersected; runs are paired by (fold, seed). Runs made from different fold
assignments (a split file's sha256 that differs between runs of one fold, or from the
fold's current split file) are refused too: their test sets are not one partition.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lymphaug.common.errors import DataError
from lymphaug.common.files import sha256_file
from lymphaug.common.metrics import confusion_matrix, macro_f1
from lymphaug.common.paths import Layout


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """One (condition, fold, seed) training run as the comparison needs it: per-image
    outcomes, so every score is recomputed here rather than trusted from the run's own
    summary."""

    condition: str
    fold: int
    seed: int
    paths: tuple[str, ...]  # test images, sorted
    labels: np.ndarray  # int, aligned with paths
    predicted: np.ndarray  # int, aligned with paths
    epochs: np.ndarray
    val_accuracy: np.ndarray  # fractions
    best_epoch: int | None
    n_train: int | None = None  # real training images (metrics.json): the corrected t's n_train
    split_sha256: str | None = None  # the fold's split file it trained on (metrics.json)

    @property
    def unit(self) -> str:
        """``fold 0 seed 1``: how messages and tables name the run within its condition."""
        return f"fold {self.fold} seed {self.seed}"

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
    """One run's outputs (of ``layout.fold``), checked and sorted by image path so runs can
    be paired by row."""
    folder = layout.train_report(condition, seed)
    pred_path = folder / "predictions.csv"
    if not pred_path.is_file():
        raise DataError(
            f"condition {condition!r}, fold {layout.fold}, seed {seed}: no training results at "
            f"{pred_path} (run `lymphaug train --condition {condition} --fold {layout.fold} "
            f"--seed {seed}` or `dvc repro`)"
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
    best_epoch = n_train = split_sha256 = None
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{metrics_path}: not valid JSON ({err})") from None
        metrics = metrics if isinstance(metrics, dict) else {}
        value = metrics.get("best_epoch")
        best_epoch = int(value) if isinstance(value, int | float) else None
        value = metrics.get("n_train")
        n_train = int(value) if isinstance(value, int | float) else None
        recorded = metrics.get("fold", layout.fold)
        if recorded != layout.fold:
            raise DataError(
                f"{metrics_path}: a run of fold {recorded} in fold {layout.fold}'s folder: "
                "copied by hand? rerun it (dvc repro)"
            )
        split_sha256 = metrics.get("split_sha256")
    return RunResult(
        condition=condition,
        fold=layout.fold,
        seed=seed,
        paths=tuple(pred["path"]),
        labels=labels,
        predicted=predicted,
        epochs=epochs,
        val_accuracy=val_acc,
        best_epoch=best_epoch,
        n_train=n_train,
        split_sha256=split_sha256,
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


def curves_table(
    layout: Layout, conditions: list[str], folds: list[int], seeds: list[int]
) -> pd.DataFrame:
    """Every run's per-epoch history in one long table
    (``run`` = "<condition> fold <f> seed <n>").

    ``dvc plots`` draws it with one line per run, coloured by condition, for whatever
    conditions, folds and seeds params list (dvc.yaml names this one file, not every run's).
    """
    frames = []
    for condition in conditions:
        for fold, seed in units(folds, seeds):
            path = layout.for_fold(fold).train_report(condition, seed) / "history.csv"
            if not path.is_file():
                continue
            try:
                hist = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
                raise DataError(f"{path}: not a readable CSV ({err})") from None
            hist.insert(0, "run", f"{condition} fold {fold} seed {seed}")
            hist.insert(1, "condition", condition)
            hist.insert(2, "fold", fold)
            hist.insert(3, "seed", seed)
            frames.append(hist)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run"])


def pooled_predictions(runs: list[RunResult], classes: list[str]) -> pd.DataFrame:
    """One condition's test predictions over all its folds and seeds: a confusion plot pools
    them."""
    rows = [
        {
            "fold": run.fold,
            "seed": run.seed,
            "path": path,
            "class": classes[label],
            "predicted_class": classes[predicted],
        }
        for run in runs
        for path, label, predicted in zip(run.paths, run.labels, run.predicted, strict=True)
    ]
    return pd.DataFrame(rows, columns=["fold", "seed", "path", "class", "predicted_class"])


def units(folds: list[int], seeds: list[int]) -> list[tuple[int, int]]:
    """The (fold, seed) units in the one order every condition's runs are listed in, so
    that position i pairs the same unit across conditions."""
    return [(fold, seed) for fold in folds for seed in seeds]


def read_all(
    layout: Layout, conditions: list[str], folds: list[int], seeds: list[int], classes: list[str]
) -> dict[str, list[RunResult]]:
    """Every (condition, fold, seed) result, each condition's in :func:`units` order;
    refuses missing runs, mismatched test sets and mixed fold assignments."""
    missing = [
        f"{condition} fold {fold} seed {seed} "
        f"({layout.for_fold(fold).train_report(condition, seed) / 'predictions.csv'})"
        for condition in conditions
        for fold, seed in units(folds, seeds)
        if not (layout.for_fold(fold).train_report(condition, seed) / "predictions.csv").is_file()
    ]
    if missing:
        raise DataError(
            f"missing training results for {len(missing)} run(s): {'; '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''} (run `dvc repro` so `lymphaug train` "
            "writes them)"
        )
    runs = {
        condition: [
            read_run(layout.for_fold(fold), condition, seed, classes)
            for fold, seed in units(folds, seeds)
        ]
        for condition in conditions
    }
    check_assignment(runs, layout)
    check_pairing(runs)
    return runs


def check_assignment(runs: dict[str, list[RunResult]], layout: Layout) -> None:
    """Every run of a fold must have trained on that fold's current split file.

    Why: runs of folds 0 and 1 from two different k-fold assignments (another split.seed,
    k_folds, or data) do not test each image exactly once, and runs of one fold from two
    versions of its split file are not tested on the same images' complement; pooling
    either would be wrong. Runs that recorded no digest (older ones) are not checked.
    """
    for run in (r for cond_runs in runs.values() for r in cond_runs):
        if run.split_sha256 is None:
            continue
        split_csv = layout.for_fold(run.fold).split_csv
        current = sha256_file(split_csv) if split_csv.is_file() else None
        if current is not None and run.split_sha256 != current:
            raise DataError(
                f"{run.condition} {run.unit} trained on a split file with sha256 "
                f"{run.split_sha256[:12]}, but {split_csv} is {current[:12]}: runs from "
                "different fold assignments cannot be pooled; rerun the stale runs (dvc repro)"
            )
    by_fold: dict[int, set[str]] = {}
    for run in (r for cond_runs in runs.values() for r in cond_runs):
        if run.split_sha256 is not None:
            by_fold.setdefault(run.fold, set()).add(run.split_sha256)
    mixed = {fold: sorted(d[:12] for d in digests) for fold, digests in by_fold.items()}
    mixed = {fold: digests for fold, digests in mixed.items() if len(digests) > 1}
    if mixed:
        fold, digests = next(iter(mixed.items()))
        raise DataError(
            f"the runs of fold {fold} trained on different split files (sha256 "
            f"{', '.join(digests)}): runs from different fold assignments cannot be pooled; "
            "rerun them on one split (dvc repro)"
        )


def check_pairing(runs: dict[str, list[RunResult]]) -> None:
    """Every run of a fold must score the same test images with the same labels."""
    all_runs = [run for cond_runs in runs.values() for run in cond_runs]
    first: dict[int, RunResult] = {}
    for run in all_runs:
        ref = first.setdefault(run.fold, run)
        if run is ref:
            continue
        if run.paths != ref.paths:
            only_ref = sorted(set(ref.paths) - set(run.paths))
            only_run = sorted(set(run.paths) - set(ref.paths))
            raise DataError(
                f"{run.condition} {run.unit} was tested on different images than "
                f"{ref.condition} {ref.unit} ({len(run.paths)} vs {len(ref.paths)} "
                f"images; only in {ref.condition} {ref.unit}: {only_ref[:3]}, only in "
                f"{run.condition} {run.unit}: {only_run[:3]}): paired tests would pair the "
                "wrong images; retrain both on the same split"
            )
        if not np.array_equal(run.labels, ref.labels):
            bad = int(np.flatnonzero(run.labels != ref.labels)[0])
            raise DataError(
                f"{run.condition} {run.unit} labels test image {run.paths[bad]} "
                f"differently from {ref.condition} {ref.unit}: the runs used different "
                "class lists or data"
            )
