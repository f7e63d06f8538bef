"""``lymphaug finetune --fold F``: fine-tune the Stable Diffusion UNet on fold F's training split.

Reads data/splits/fold_<F>.csv (training rows only, checked by ``assert_train_only``) and
the class prompts from params, trains under accelerate (``accelerate launch lymphaug
finetune`` works on several GPUs), and writes the model to ``models/diffusion/fold_<F>``
(see :mod:`lymphaug.diffusion.loading` for its form; its description records the fold and
the split file's sha256, which generate checks) plus the loss curve
``reports/folds/fold_<F>/finetune_loss.csv``. Checkpoints live in
``work/finetune/fold_<F>/<params hash>`` so an
interrupted run resumes where it stopped. Once the model is saved they are removed, as
train does: they only serve an interrupted run (a full Stable Diffusion checkpoint with
Adam state is ~10 GB, several times the model), the model itself is in ``models/diffusion/``
and DVC's cache, and training longer changes ``max_steps`` and so the work folder anyway.

One finetune per fold runs at a time (a lock in ``work/finetune/fold_<F>``); holding it, a
run removes what killed runs left: temporary model folders, half-written checkpoints, and
the work folders of other params.
"""

from __future__ import annotations

import functools
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pandas as pd

from lymphaug.common.config import SCRATCH, FinetuneConfig, Params
from lymphaug.common.errors import ConfigError, DataError
from lymphaug.common.files import atomic_path, prune, remove, remove_stale_temps, sha256_file
from lymphaug.common.images import read_rgb
from lymphaug.common.locks import exclusive, lock_path
from lymphaug.common.manifest import RAW_COLUMNS, SPLIT_COLUMNS, assert_train_only, read_table
from lymphaug.common.paths import Layout

# settings that change where checkpoints go, how often and how closely we look, or the speed:
# not the result
_NOT_HASHED = {
    "checkpoint_every",
    "checkpoints_total_limit",
    "validation_every",
    "validation_steps",
    "num_threads",
    "max_cpu_hours",
}


def training_rows(split: pd.DataFrame, classes: list[str], prompts: dict[str, str]) -> pd.DataFrame:
    """The training split's rows, checked: known classes, a prompt for each, train-only."""
    train = split[split["split"] == "train"].sort_values("path", kind="stable")
    unknown = sorted(set(train["class"]) - set(classes))
    if unknown:
        raise DataError(f"split file: class(es) {unknown} are not in params classes {classes}")
    no_prompt = [c for c in classes if not prompts.get(c, "").strip()]
    if no_prompt:
        raise ConfigError(f"finetune.prompts has no (or an empty) prompt for class(es) {no_prompt}")
    if train.empty:
        raise DataError("split file: no training images to fine-tune on")
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
    from lymphaug.diffusion import training

    accelerator = training.make_accelerator(params.finetune)
    lock = lock_path(layout.fold_work("finetune"))
    # only the main process writes, so only it locks and cleans up
    with (
        exclusive(lock, f"lymphaug finetune --fold {layout.fold}")
        if accelerator.is_main_process
        else nullcontext()
    ):
        return _finetune(
            params,
            layout,
            accelerator=accelerator,
            resume=resume,
            resume_from=resume_from,
            track=track,
            on_step=on_step,
        )


def clean_stale(
    layout: Layout, work_dir: Path, resume_from: Path | None, *, model_dir: Path | None = None
) -> list[Path]:
    """What killed or other-params runs left (call it holding the lock); returns what went.

    ``work_dir`` is ``work/<stage>/<hash>``; ``model_dir`` the stage's output folder
    (default: finetune's ``models/diffusion``).
    """
    keep = {work_dir, lock_path(work_dir.parent)}
    if resume_from is not None:  # a --resume-from checkpoint of other params stays
        folder = work_dir.parent.resolve()
        keep |= {p for p in (resume_from, *resume_from.parents) if p.parent == folder}
    half_written = list((work_dir / "checkpoints").glob(".checkpoint-*"))
    for path in half_written:
        remove(path)
    others = prune(work_dir.parent, keep)
    target = model_dir if model_dir is not None else layout.diffusion_model
    return [*remove_stale_temps(target), *half_written, *others]


def check_crops_fit(images, paths, *, scale: float, resolution: int, key: str) -> None:
    """Every image, rescaled by ``scale``, must hold a ``resolution`` square crop: else one
    clear error naming the file, at start-up rather than deep inside a training step."""
    for image, path in zip(images, paths, strict=True):
        height, width = image.shape[:2]
        w, h = round(width * scale), round(height * scale)
        if min(w, h) < resolution:
            raise DataError(
                f"{path}: {width}x{height} px is {w}x{h} px at autoencoder.scale={scale:g}, "
                f"smaller than the {resolution} px crops of {key}; lower {key} or raise "
                "autoencoder.scale"
            )


def _finetune(
    params: Params,
    layout: Layout,
    *,
    accelerator,
    resume: bool,
    resume_from: Path | None,
    track: bool,
    on_step,
):
    from lymphaug.diffusion import loading, training

    cfg = params.finetune
    is_main = accelerator.is_main_process
    split = read_table(layout.split_csv, SPLIT_COLUMNS)
    train = training_rows(split, params.classes, cfg.prompts)
    identity = finetune_identity(cfg, params.classes, train, layout.raw)
    base = None
    if cfg.base_model == SCRATCH:  # a retrained autoencoder never resumes an old UNet
        identity.append(loading.weights_digest(layout.autoencoder_model))
    else:  # nor do other base weights (a replaced folder, a new hub commit)
        base = loading.resolve_base(cfg.base_model, layout.root, cfg.revision)
        identity.append(base.version)
        if is_main:
            _note_untracked_base(base, layout)
    work_dir = layout.work_dir("finetune", identity)
    if is_main:
        stale = clean_stale(layout, work_dir, resume_from and resume_from.resolve())
        if stale:
            print(f"finetune: removed {len(stale)} leftover(s) of earlier runs", file=sys.stderr)
    if not resume:
        remove(work_dir)
    data = load_training_data(train, layout.raw, params.classes, cfg.prompts)
    # which fold's training images it learned: generate refuses to sample another fold's
    extra: dict = {"fold": layout.fold, "split_sha256": sha256_file(layout.split_csv)}
    scale = None
    if cfg.base_model == SCRATCH:
        pipe, scale = _scratch_base(cfg, layout, data, train)
        extra["scale"] = scale
    else:
        pipe = loading.open_base(base, cfg.seed)
    # the base's version, to rebuild or check it under a LoRA adapter and to say what was used
    # (a tiny base is rebuilt from its seed: its UNet's fingerprint)
    base_fingerprint = ""
    if base is not None:
        base_fingerprint = base.version or loading.unet_fingerprint(pipe.unet)
    info = loading.ModelInfo(
        method=cfg.method,
        base_model=cfg.base_model,
        tiny_seed=cfg.seed,
        resolution=cfg.resolution,
        classes=list(params.classes),
        prompts={c: cfg.prompts[c] for c in params.classes},
        base_fingerprint=base_fingerprint,
        steps=cfg.max_steps,
        extra=extra,
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
        scale=scale,
    )
    if not (track and is_main):
        result = run_training(on_step=on_step)
        return result, _save(
            pipe, layout, info=info, result=result, is_main=is_main, work_dir=work_dir
        )

    import mlflow

    from lymphaug.diffusion.track import MetricBuffer, child_run, flat_params

    with child_run(params, layout.root, "finetune", fold=layout.fold) as run_id:
        mlflow.log_params({**flat_params("finetune", cfg), "train_images": len(train)})
        mlflow.set_tags({"base_model": cfg.base_model, "base_fingerprint": base_fingerprint})
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
        saved = _save(pipe, layout, info=info, result=result, is_main=is_main, work_dir=work_dir)
        mlflow.log_metrics({"final_loss": result.losses[-1], "resumed_from": result.resumed_from})
        log_model_reference(layout.diffusion_model, saved, root=layout.root)
        mlflow.log_artifact(str(layout.fold_reports / "finetune_loss.csv"))
    return result, saved


MLFLOW_COPY_LIMIT = 100 * 2**20  # bytes: an adapter, the tiny and from-scratch models are less


def log_model_reference(model_dir: Path, info, *, root: Path) -> None:
    """Weights are stored once: in ``models/diffusion``, versioned by DVC (its cache, its
    remote). The active MLflow run gets tags naming that output and its weights' fingerprint,
    the description, and a copy of the weights only when they are small: a full Stable
    Diffusion pipeline is 4 GB (its UNet alone 3.3 GB), which MLflow would store again."""
    import mlflow

    from lymphaug.diffusion import loading

    mlflow.set_tags(
        {
            "model_path": model_dir.relative_to(root).as_posix(),
            "model_fingerprint": info.fingerprint,
        }
    )
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    if size <= MLFLOW_COPY_LIMIT:
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
    else:
        mlflow.log_artifact(str(model_dir / loading.INFO_FILE), artifact_path="model")


def _note_untracked_base(base, layout: Layout) -> None:
    """A local base inside the repository but not in models/diffusion_base is no DVC
    dependency (dvc.yaml cannot name a folder chosen in params): replacing it would leave
    finetune "up to date". Say so; its digest still names the work folder and the model."""
    if base.kind != "path":
        return
    folder, root = Path(base.source).resolve(), layout.root.resolve()
    if folder.is_relative_to(root) and folder != layout.diffusion_base.resolve():
        print(
            f"finetune: note: the base model {folder} is inside the repository but not in "
            f"{layout.diffusion_base.relative_to(layout.root)}, the folder dvc.yaml tracks: "
            "DVC will not rerun finetune when it changes; move it there",
            file=sys.stderr,
        )


def _scratch_base(cfg: FinetuneConfig, layout: Layout, data, train: pd.DataFrame):
    """The from-scratch base: the trained autoencoder, the frozen text side, a fresh UNet;
    returns (pipe, the autoencoder's pixel scale), having checked every image holds a crop."""
    from lymphaug.diffusion.autoencoder import load_trained
    from lymphaug.diffusion.scratch import build_scratch_pipeline

    vae, ae_info = load_trained(layout.autoencoder_model)
    paths = [layout.raw / p for p in train["path"]]
    check_crops_fit(
        data.images,
        paths,
        scale=ae_info.scale,
        resolution=cfg.resolution,
        key="finetune.resolution",
    )
    pipe = build_scratch_pipeline(
        vae, unet_width=cfg.unet_width, resolution=cfg.resolution, seed=cfg.seed
    )
    return pipe, ae_info.scale


def _save(pipe, layout: Layout, *, info, result, is_main: bool, work_dir: Path):
    """Only the main process writes, so several processes never race on the same files.

    The checkpoints go once the model is in place (see the module docstring for why).
    """
    from lymphaug.diffusion import loading

    if not is_main:
        return info
    if info.method == "full":  # frozen parts may sit in fp16/bf16 after training on a GPU
        import torch

        pipe.to(torch.float32)
    with atomic_path(layout.diffusion_model) as tmp:
        saved = loading.save_finetuned(pipe, tmp, info)
    write_curve(layout.fold_reports / "finetune_loss.csv", result.losses, result.lrs)
    remove(work_dir)
    return saved


def resume_options(args) -> dict:
    """``--no-resume`` and ``--resume-from`` as the stage functions' keyword arguments."""
    resume_from = getattr(args, "resume_from", None)
    return {
        "resume": not getattr(args, "no_resume", False),
        "resume_from": Path(resume_from) if resume_from else None,
    }


def run(params: Params, layout: Layout, args) -> int:
    start = time.perf_counter()
    from lymphaug.diffusion.loading import cpu_threads

    with cpu_threads(params.finetune.base_model, params.finetune.num_threads):
        result, info = finetune(params, layout, **resume_options(args))
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
