"""``lymphaug train --condition <base|dct|synthetic> --fold <f> --seed <n>``: one classifier run.

Order matters: the MLflow run is opened first (an unreachable server fails in
seconds, not after training), then every image is decoded once, the model is
trained with a checkpoint per epoch under ``work/train/fold_<f>/<condition>/seed_<n>/<hash>``
(DVC deletes the stage's outputs before a rerun; the work folder survives, so a
killed run resumes; it is removed once the outputs are in place), the best epoch is
evaluated on the test split, and the outputs are moved into place atomically:

- ``models/<condition>/fold_<f>/seed_<n>/``: ``model.pt`` (torchvision state dict) +
  ``model.json``
- ``reports/train/<condition>/fold_<f>/seed_<n>/``: ``metrics.json`` (with the fold and the
  sha256 of its split file), ``history.csv``, ``predictions.csv``

Before any of that: the input pipeline and architecture are checked (see
:func:`~lymphaug.classifier.checks.check_input_pipeline`) and the lock
``work/train/fold_<f>/<condition>/seed_<n>/.lock`` is taken, so a second run of the same
condition, fold and seed refuses at once instead of deleting the first one's MLflow run;
holding it, a run removes what killed runs left (temporary outputs, other params' work
folders). A tracking server that stops answering mid-run ends the stage with one message:
the checkpoint stays and a rerun resumes from it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lymphaug.classifier.checks import check_input_pipeline
from lymphaug.classifier.data import Splits, load_splits
from lymphaug.classifier.evaluate import confusion_png, curves_png, evaluate
from lymphaug.classifier.loop import CHECKPOINT, FitResult, fit, restore_best, set_determinism
from lymphaug.classifier.model import PROJECT_CNN, Classifier, build_classifier
from lymphaug.classifier.transforms import IMAGENET_MEAN, IMAGENET_STD
from lymphaug.common.config import Params
from lymphaug.common.errors import ConfigError
from lymphaug.common.files import (
    atomic_path,
    prune,
    remove,
    remove_stale_temps,
    sha256_file,
    write_text_atomic,
)
from lymphaug.common.locks import exclusive, lock_path
from lymphaug.common.paths import Layout
from lymphaug.common.tracking import TrackingError, check_reachable, tracking_uri

REPORT_FILES = ("metrics.json", "history.csv", "predictions.csv")


@dataclass
class Outcome:
    model: Classifier
    fit: FitResult
    metrics: dict
    predictions: pd.DataFrame

    @property
    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.fit.history)


def select_device(name: str) -> torch.device:
    """``auto``: the GPU when one is visible. Under torchrun each process takes GPU LOCAL_RANK
    (``cuda``); ``cuda:N`` pins GPU N."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def check_device(name: str) -> torch.device:
    """The device ``train.device`` names, or ConfigError if this machine does not have it."""
    device = select_device(name)
    if device.type != "cuda":
        return device
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not visible:
        raise ConfigError(
            f"train.device is {name!r} but no CUDA GPU is visible; use 'auto' or 'cpu'"
        )
    if (device.index or 0) >= visible:
        raise ConfigError(
            f"train.device is {name!r} but only {visible} CUDA GPU(s) are visible "
            f"(cuda:0..cuda:{visible - 1})"
        )
    return device


def train_condition(
    params: Params,
    splits: Splits,
    *,
    seed: int,
    root: Path = Path("."),
    work_dir: Path | None = None,
    resume: bool = True,
    stop_after_epoch: int | None = None,
    on_epoch=None,
) -> Outcome:
    """Build, train and test one classifier; the pure core of the stage (tests call it)."""
    cfg = params.train
    classes = list(params.classes)
    torch.manual_seed(seed)  # the new head's initial weights
    model = build_classifier(
        cfg.arch,
        len(classes),
        cfg.weights,
        root,
        input_size=cfg.input_size,
        width=cfg.width,
        small_stem=cfg.small_stem,
    )
    model.to(select_device(cfg.device))
    result = fit(
        model,
        splits.train,
        splits.val,
        cfg=cfg,
        seed=seed,
        classes=classes,
        work_dir=work_dir,
        resume=resume,
        stop_after_epoch=stop_after_epoch,
        on_epoch=on_epoch,
    )
    metrics: dict = {"best_epoch": result.best_epoch}
    preds = pd.DataFrame()
    if result.finished:
        restore_best(model, result, cfg.freeze_backbone)
        best = next(r for r in result.history if r["epoch"] == result.best_epoch)
        test_metrics, preds = evaluate(
            model,
            splits.test,
            classes=classes,
            cfg=cfg,
            root=root,
        )
        metrics = {
            "best_epoch": result.best_epoch,
            "best_val_acc": best["val_acc"],
            "best_val_loss": best["val_loss"],
            "test_accuracy": test_metrics["accuracy"],
            "test_macro_f1": test_metrics["macro_f1"],
            "n_train": len(splits.train),
            "n_val": len(splits.val),
            "n_test": len(splits.test),
            "per_class": test_metrics["per_class"],
            "confusion_matrix": test_metrics["confusion_matrix"],
        }
    return Outcome(model.cpu(), result, metrics, preds)


def data_digests(layout: Layout, condition: str, params: Params) -> dict[str, tuple[Path, str]]:
    """sha256 of every manifest a condition reads: identifies its data in tags and hashes."""
    files = {"raw": layout.raw_manifest, "split": layout.split_csv}
    if condition == "dct":
        files["dct"] = layout.dct / "manifest.csv"
    elif condition == "synthetic":
        synthetic = layout.synthetic_training_dir(params.train.synthetic_dir)
        files["synthetic"] = synthetic / "manifest.csv"
    return {k: (p, sha256_file(p)) for k, p in files.items() if p.is_file()}


def run_identity(params: Params, condition: str, seed: int, digests: dict[str, str]) -> list:
    """Everything that changes a run's result (its work folder's name): a change starts fresh."""
    cfg = params.train.model_dump(exclude={"seeds", "device", "num_threads"})
    if condition != "dct":
        cfg.pop("dct_methods")
    if condition != "synthetic":
        cfg.pop("synthetic_dir")
    return [cfg, params.classes, condition, seed, digests]


def work_folder(
    params: Params, layout: Layout, condition: str, seed: int, digests: dict[str, tuple[Path, str]]
) -> Path:
    """``work/train/fold_<f>/<condition>/seed_<n>/<digest>``: where this run's checkpoints
    live."""
    identity = run_identity(params, condition, seed, {k: d for k, (_, d) in digests.items()})
    return layout.work_dir("train", identity, condition, f"seed_{seed}")


def write_outputs(
    outcome: Outcome, *, params: Params, layout: Layout, condition: str, seed: int
) -> list[Path]:
    """Models and reports, each file atomically; returns the report files."""
    cfg = params.train
    model_dir = layout.classifier(condition, seed)
    with atomic_path(model_dir) as tmp:
        tmp.mkdir(parents=True)
        with open(tmp / "model.pt", "wb") as f:  # a Python file: a full disk is an OSError
            torch.save(outcome.model.torchvision_state_dict(), f)
        info = {
            "arch": cfg.arch,
            "classes": list(params.classes),
            "width": cfg.width if cfg.arch == PROJECT_CNN else None,
            "small_stem": cfg.small_stem,
            "scale": cfg.scale,
            "patch_size": cfg.patch_size,
            "eval": cfg.eval,
            "input_size": cfg.input_size,
            "eval_resize": round(cfg.input_size * 256 / 227),
            "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "best_epoch": outcome.fit.best_epoch,
            "condition": condition,
            "fold": layout.fold,
            "seed": seed,
        }
        (tmp / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    rep = layout.train_report(condition, seed)
    rep.mkdir(parents=True, exist_ok=True)
    metrics, history, predictions = (rep / n for n in REPORT_FILES)
    write_text_atomic(metrics, json.dumps(outcome.metrics, indent=2) + "\n")
    with atomic_path(history) as tmp:
        outcome.history.to_csv(tmp, index=False, lineterminator="\n", float_format="%.6f")
    with atomic_path(predictions) as tmp:
        outcome.predictions.to_csv(tmp, index=False, lineterminator="\n")
    return [metrics, history, predictions]


def init_distributed() -> int:
    """Join the process group when started by torchrun; return this rank.

    gloo works for CPU and (more slowly) CUDA tensors alike, so one backend serves
    both; the all-reduced tensors are small (gradients once per batch, metrics).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch.distributed as dist

    if not dist.is_initialized():  # a lost peer errors after 10 min instead of hanging forever
        dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=10))
    return dist.get_rank()


def note_slow_precision(precision: str, device: torch.device) -> str | None:
    """Why bf16 would be slow here, or None: a CPU without native bf16 emulates it.

    On CPUs with AVX512-BF16 or AMX, bf16 autocast trains the project's CNN about 1.6-1.7x
    faster than fp32 (measured at width 16 and 24); elsewhere it is emulated, about 3x slower
    than fp32 (the cpu profile's first epoch: 366 s vs 114 s on an AVX2-only EPYC).
    """
    if precision != "bf16" or device.type != "cpu" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return (
        "train.precision is bf16 but this CPU has no native bf16 (AVX512-BF16 or AMX): "
        "it is emulated, about 3x slower than fp32; set train.precision: fp32"
    )


def run(params: Params, layout: Layout, args: argparse.Namespace) -> int:
    cfg = params.train
    # every rank checks (the same answer), so none is left waiting for a rank that refused
    device = check_device(cfg.device)
    if (note := note_slow_precision(cfg.precision, device)) is not None:
        print(f"train: {note}", file=sys.stderr)
    # patches that do not fit, or inputs the network cannot take: refused before any decoding
    check_input_pipeline(cfg, layout.raw_manifest, len(params.classes))
    rank = init_distributed()
    try:
        if rank == 0:
            return _run_writer(params, layout, args)
        # other ranks compute their share and write nothing
        set_determinism(params.train.num_threads)
        splits = load_splits(args.condition, params, layout)
        digests = data_digests(layout, args.condition, params)
        train_condition(
            params,
            splits,
            seed=args.seed,
            root=layout.root,
            work_dir=work_folder(params, layout, args.condition, args.seed, digests),
            resume=not args.no_resume,
        )
        return 0
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def clean_stale(layout: Layout, work: Path, *, condition: str, seed: int) -> list[Path]:
    """What killed or other-params runs of this condition and seed left (hold the lock)."""
    report = layout.train_report(condition, seed)
    stale = [
        *remove_stale_temps(layout.classifier(condition, seed)),
        *(p for n in REPORT_FILES for p in remove_stale_temps(report / n)),
        *remove_stale_temps(work / CHECKPOINT),
    ]
    return [*stale, *prune(work.parent, {work, lock_path(work.parent)})]


def _run_writer(params: Params, layout: Layout, args: argparse.Namespace) -> int:
    condition, seed = args.condition, args.seed
    set_determinism(params.train.num_threads)
    digests = data_digests(layout, condition, params)
    work = work_folder(params, layout, condition, seed, digests)
    check_reachable(tracking_uri(params.mlflow, layout.root))  # a server that is down: no trace
    # taken before the MLflow run: a second run would delete the first one's run
    with exclusive(
        lock_path(work.parent),
        f"lymphaug train --condition {condition} --fold {layout.fold} --seed {seed}",
    ):
        stale = clean_stale(layout, work, condition=condition, seed=seed)
        if stale:
            print(f"train: removed {len(stale)} leftover(s) of earlier runs", file=sys.stderr)
        return _train_and_log(
            params,
            layout,
            condition=condition,
            seed=seed,
            work=work,
            digests=digests,
            resume=not args.no_resume,
        )


def _train_and_log(
    params: Params,
    layout: Layout,
    *,
    condition: str,
    seed: int,
    work: Path,
    digests: dict[str, tuple[Path, str]],
    resume: bool,
) -> int:
    """The MLflow child run around training, testing and writing the outputs."""
    from lymphaug.classifier.mlflow_run import ChildRun

    child = ChildRun(params, layout, condition, seed)  # fails fast if the server is down
    try:
        splits = load_splits(condition, params, layout)
        manifests = {}
        for name, df in splits.manifests.items():
            path = digests.get("split" if name in ("train", "val", "test") else name)
            digest = hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()
            manifests[name] = (df, path[0] if path else layout.split_csv, digest)
        tags = {f"data.{k}.sha256": d for k, (_, d) in digests.items()}
        child.log_setup(params, condition=condition, seed=seed, manifests=manifests, tags=tags)
        outcome = train_condition(
            params,
            splits,
            seed=seed,
            root=layout.root,
            work_dir=work,
            resume=resume,
            on_epoch=child.log_epoch,
        )
        # which assignment it was tested on: compare refuses to pool runs of different ones
        outcome.metrics.update(fold=layout.fold, split_sha256=digests["split"][1])
        files = write_outputs(outcome, params=params, layout=layout, condition=condition, seed=seed)
        title = f"{condition} fold={layout.fold} seed={seed}"
        figures = work / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        confusion_png(
            outcome.metrics["confusion_matrix"],
            list(params.classes),
            figures / "confusion_matrix.png",
            title,
        )
        curves_png(outcome.history, figures / "training_curves.png", title)
        child.finish(
            outcome.metrics,
            [*files, *sorted(figures.glob("*.png"))],
            layout.classifier(condition, seed),
        )
    except TrackingError as err:
        child.fail(server_down=True)
        kept = (
            f"the checkpoint {work / CHECKPOINT} is kept: rerun the same command (or dvc repro) "
            "to resume from it"
            if (work / CHECKPOINT).is_file()
            else "no epoch had finished, so a rerun starts from the beginning"
        )
        raise TrackingError(f"{err}; training stopped, {kept}") from None
    except BaseException:
        child.fail()
        raise
    # The checkpoints (up to ~1 GB for AlexNet with Adam) only serve an interrupted run;
    # the finished model is in models/ and DVC's cache.
    remove(work)
    m = outcome.metrics
    resumed = outcome.fit.resumed_from
    print(
        f"train {condition} fold={layout.fold} seed={seed}: "
        + (f"resumed from epoch {resumed}, " if resumed else "")
        + f"best epoch {m['best_epoch']}, "
        f"val acc {m['best_val_acc']:.3f}, test acc {m['test_accuracy']:.3f}, "
        f"macro-F1 {m['test_macro_f1']:.3f} (MLflow run {child.run_id} at {child.uri})"
    )
    return 0
