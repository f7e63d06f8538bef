"""``lymphaug finetune``: fine-tune the Stable Diffusion UNet on the training split.

Reads data/split.csv (training rows only, checked by ``assert_train_only``) and the class
prompts from params, trains under accelerate (``accelerate launch lymphaug finetune``
works on several GPUs), and writes the model to ``models/diffusion`` (see
:mod:`lymphaug.diffusion.loading` for its form) plus the loss curve
``reports/finetune_loss.csv``. Checkpoints live in ``work/finetune/<params hash>`` so an
interrupted run (or one whose outputs DVC deleted) resumes where it stopped.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pandas as pd

from lymphaug.common.config import FinetuneConfig, Params
from lymphaug.common.errors import ConfigError, DataError
from lymphaug.common.files import atomic_path, remove
from lymphaug.common.images import read_rgb
from lymphaug.common.manifest import RAW_COLUMNS, SPLIT_COLUMNS, assert_train_only, read_table
from lymphaug.common.paths import Layout

# settings that change where checkpoints are written or how often we look, not the result
_NOT_HASHED = {"checkpoint_every", "checkpoints_total_limit", "validation_every"}


def training_rows(split: pd.DataFrame, classes: list[str], prompts: dict[str, str]) -> pd.DataFrame:
    """The training split's rows, checked: known classes, a prompt for each, train-only."""
    train = split[split["split"] == "train"].sort_values("path", kind="stable")
    unknown = sorted(set(train["class"]) - set(classes))
    if unknown:
        raise DataError(f"data/split.csv: class(es) {unknown} are not in params classes {classes}")
    no_prompt = [c for c in classes if not prompts.get(c, "").strip()]
    if no_prompt:
        raise ConfigError(f"finetune.prompts has no (or an empty) prompt for class(es) {no_prompt}")
    if train.empty:
        raise DataError("data/split.csv: no training images to fine-tune on")
    assert_train_only(train["path"], split, "finetune")
    return train.reset_index(drop=True)


def finetune_identity(cfg: FinetuneConfig, classes: list[str], train: pd.DataFrame, raw: Path):
    """Identify a fine-tune by its result-relevant settings and its exact training images."""
    settings = {k: v for k, v in cfg.model_dump().items() if k not in _NOT_HASHED}
    sha = {}
    manifest = raw / "manifest.csv"
    if manifest.is_file():
        df = read_table(manifest, RAW_COLUMNS)
        sha = dict(zip(df["path"], df["sha256"], strict=True))
    items = [(p, c, sha.get(p, "")) for p, c in zip(train["path"], train["class"], strict=True)]
    return [settings, classes, items]


def load_training_data(train: pd.DataFrame, raw: Path, classes: list[str], prompts: dict[str, str]):
    """Images in memory, labels as class indices, prompts ordered by class index."""
    from lymphaug.diffusion.training import TrainData

    images = [read_rgb(raw / p) for p in train["path"]]
    labels = [classes.index(c) for c in train["class"]]
    return TrainData(images=images, labels=labels, prompts=[prompts[c] for c in classes])


def write_curve(path: Path, losses: list[float], lrs: list[float]) -> None:
    df = pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses, "lr": lrs})
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n", float_format="%.6g")


def finetune(
    params: Params,
    layout: Layout,
    *,
    resume: bool = True,
    resume_from: Path | None = None,
    track: bool = True,
    on_step=None,
):
    """Fine-tune and save to ``layout.diffusion_model``; returns (TrainResult, ModelInfo)."""
    from lymphaug.diffusion import loading, training

    cfg = params.finetune
    split = read_table(layout.split_csv, SPLIT_COLUMNS)
    train = training_rows(split, params.classes, cfg.prompts)
    work_dir = layout.work_dir(
        "finetune", finetune_identity(cfg, params.classes, train, layout.raw)
    )
    if not resume:
        remove(work_dir)
    data = load_training_data(train, layout.raw, params.classes, cfg.prompts)
    pipe = loading.load_base(cfg.base_model, cfg.seed, layout.root)
    # a tiny base is rebuilt from its seed under a LoRA adapter: record it to check it is the same
    base_fingerprint = loading.unet_fingerprint(pipe.unet) if cfg.base_model == "tiny" else ""
    accelerator = training.make_accelerator(cfg)
    is_main = accelerator.is_main_process
    info = loading.ModelInfo(
        method=cfg.method,
        base_model=cfg.base_model,
        tiny_seed=cfg.seed,
        resolution=cfg.resolution,
        classes=list(params.classes),
        prompts={c: cfg.prompts[c] for c in params.classes},
        base_fingerprint=base_fingerprint,
        steps=cfg.max_steps,
    )
    run_training = functools.partial(
        training.train_unet,
        pipe,
        cfg,
        data,
        work_dir=work_dir,
        accelerator=accelerator,
        resume=resume,
        resume_from=resume_from,
    )
    if not (track and is_main):
        result = run_training(on_step=on_step)
        return result, _save(pipe, layout, info=info, result=result, is_main=is_main)

    import mlflow

    from lymphaug.diffusion.track import MetricBuffer, child_run, flat_params

    with child_run(params, layout.root, "finetune") as run_id:
        mlflow.log_params({**flat_params("finetune", cfg), "train_images": len(train)})
        buffer = MetricBuffer(run_id)

        def log_step(step: int, loss: float, lr: float) -> None:
            buffer.add(step, loss=loss, lr=lr)
            if on_step:
                on_step(step, loss, lr)

        def log_grid(step: int, image) -> None:
            buffer.flush()
            mlflow.log_image(image, key="validation_samples", step=step)

        try:
            result = run_training(on_step=log_step, on_validation=log_grid)
        finally:
            buffer.flush()
        saved = _save(pipe, layout, info=info, result=result, is_main=is_main)
        mlflow.log_metrics({"final_loss": result.losses[-1], "resumed_from": result.resumed_from})
        model_dir = layout.diffusion_model
        if cfg.method == "lora" or cfg.base_model == "tiny":
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
        else:  # a full SD pipeline: log what changed (the UNet) and the description
            mlflow.log_artifacts(str(model_dir / "unet"), artifact_path="model/unet")
            mlflow.log_artifact(str(model_dir / loading.INFO_FILE), artifact_path="model")
        mlflow.log_artifact(str(layout.reports / "finetune_loss.csv"))
    return result, saved


def _save(pipe, layout: Layout, *, info, result, is_main: bool):
    """Only the main process writes, so several processes never race on the same files."""
    from lymphaug.diffusion import loading

    if not is_main:
        return info
    if info.method == "full":  # frozen parts may sit in fp16/bf16 after training on a GPU
        import torch

        pipe.to(torch.float32)
    with atomic_path(layout.diffusion_model) as tmp:
        saved = loading.save_finetuned(pipe, tmp, info)
    write_curve(layout.reports / "finetune_loss.csv", result.losses, result.lrs)
    return saved


def run(params: Params, layout: Layout, args) -> int:
    start = time.perf_counter()
    resume_from = getattr(args, "resume_from", None)
    from lymphaug.diffusion.loading import cpu_threads

    with cpu_threads(params.finetune.base_model):
        result, info = finetune(
            params,
            layout,
            resume=not getattr(args, "no_resume", False),
            resume_from=Path(resume_from) if resume_from else None,
        )
    n = len(result.losses)
    first = sum(result.losses[:10]) / max(1, len(result.losses[:10]))
    last = sum(result.losses[-10:]) / max(1, len(result.losses[-10:]))
    note = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
    print(
        f"finetune: {info.method} on {info.base_model!r}, {n} steps{note}; loss (mean of 10) "
        f"{first:.4f} -> {last:.4f}; {time.perf_counter() - start:.1f} s "
        f"-> {layout.diffusion_model}"
    )
    return 0
