"""``lymphaug autoencoder --fold F``: the from-scratch generator's first stage, learned from
fold F's training images -> models/autoencoder/fold_<F>.

With ``finetune.base_model: scratch`` it trains an AutoencoderKL on random crops of the
rescaled *training* images (checked by ``assert_train_only``; see
:mod:`lymphaug.diffusion.autoencoder`), logs the reconstruction error per step to MLflow,
and writes the model and, in ``reports/folds/fold_<F>/``, ``autoencoder_loss.csv``,
``autoencoder.json`` (the reconstruction error on training and on unseen validation crops)
and ``autoencoder_reconstructions.png`` (real crops above, their reconstructions below).
Its own DVC stage, so changing only the UNet's settings reuses the trained autoencoder.

Any other base brings its own VAE: the stage then writes only a description saying so
(``trained: false``) and placeholder reports, in milliseconds, so the pipeline is the same
for every base. Checkpoints live in ``work/autoencoder/fold_<F>/<params hash>`` and go once
the model is saved; one autoencoder per fold runs at a time (a lock in
``work/autoencoder/fold_<F>``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd

from lymphaug.common.config import SCRATCH, Params
from lymphaug.common.files import atomic_path, remove, umask_modes, write_text_atomic
from lymphaug.common.images import read_rgb
from lymphaug.common.locks import exclusive, lock_path
from lymphaug.common.manifest import SPLIT_COLUMNS, read_table
from lymphaug.common.paths import AUTOENCODER_METRICS, Layout
from lymphaug.finetune import (
    check_crops_fit,
    clean_stale,
    finetune_identity,
    resume_options,
    training_rows,
)

CURVE = "autoencoder_loss.csv"
METRICS = AUTOENCODER_METRICS
SHEET = "autoencoder_reconstructions.png"
SHEET_PER_CLASS = 3


def _write_reports(layout: Layout, *, curve: pd.DataFrame, metrics: dict, sheet) -> None:
    with atomic_path(layout.fold_reports / CURVE) as tmp:
        curve.to_csv(tmp, index=False, lineterminator="\n", float_format="%.6g")
    text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    write_text_atomic(layout.autoencoder_metrics, text)
    with atomic_path(layout.fold_reports / SHEET) as tmp:
        sheet.save(tmp, format="PNG")


def skip(params: Params, layout: Layout):
    """A base with its own VAE: a description that says so, and placeholder reports."""
    from PIL import Image, ImageDraw

    from lymphaug.diffusion.autoencoder import AutoencoderInfo, write_info

    base = params.finetune.base_model
    info = AutoencoderInfo(trained=False, reason=f"finetune.base_model {base!r} brings its own VAE")
    with atomic_path(layout.autoencoder_model) as tmp:
        tmp.mkdir(parents=True)
        write_info(tmp, info)
    sheet = Image.new("RGB", (360, 24), "white")
    ImageDraw.Draw(sheet).text((4, 6), f"no autoencoder trained: {info.reason}", fill="black")
    curve = pd.DataFrame(columns=["step", "loss", "lr"])
    _write_reports(layout, curve=curve, metrics={"trained": False}, sheet=sheet)
    return info


def autoencoder(
    params: Params,
    layout: Layout,
    *,
    resume: bool = True,
    resume_from: Path | None = None,
    track: bool = True,
    on_step=None,
):
    """The whole stage; returns (AutoencoderInfo, AutoencoderResult or None when skipped)."""
    if params.finetune.base_model != SCRATCH:
        return skip(params, layout), None
    with exclusive(
        lock_path(layout.fold_work("autoencoder")), f"lymphaug autoencoder --fold {layout.fold}"
    ):
        return _train(
            params, layout, resume=resume, resume_from=resume_from, track=track, on_step=on_step
        )


def _rescaled(layout: Layout, rows: pd.DataFrame, cfg, key: str):
    from lymphaug.diffusion.training import rescaled

    images = [read_rgb(layout.raw / p) for p in rows["path"]]
    paths = [layout.raw / p for p in rows["path"]]
    check_crops_fit(images, paths, scale=cfg.scale, resolution=cfg.resolution, key=key)
    return [rescaled(img, cfg.scale) for img in images]


def _train(params: Params, layout: Layout, *, resume, resume_from, track, on_step):
    import torch

    from lymphaug.diffusion import autoencoder as ae
    from lymphaug.diffusion.scratch import build_autoencoder

    cfg = params.autoencoder
    split = read_table(layout.split_csv, SPLIT_COLUMNS)
    train = training_rows(split, params.classes, params.finetune.prompts)
    work_dir = layout.work_dir(
        "autoencoder", finetune_identity(cfg, params.classes, train, layout.raw)
    )
    stale = clean_stale(
        layout, work_dir, resume_from and resume_from.resolve(), model_dir=layout.autoencoder_model
    )
    if stale:
        print(f"autoencoder: removed {len(stale)} leftover(s) of earlier runs", file=sys.stderr)
    if not resume:
        remove(work_dir)
    images = _rescaled(layout, train, cfg, "autoencoder.resolution")
    val = split[split["split"] == "val"].sort_values("path", kind="stable")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = build_autoencoder(cfg)
    run_training = dict(work_dir=work_dir, device=device, resume=resume, resume_from=resume_from)

    def finish(result, log=None):
        # Scale the latents to unit variance, measure the reconstructions, save the model
        factor = ae.set_scaling_factor(vae, cfg, images)
        held_out = _rescaled(layout, val, cfg, "autoencoder.resolution") if len(val) else []
        reconstruction, sheet = _evaluate(vae, cfg, images, train, held_out, val)
        info = ae.AutoencoderInfo(
            trained=True,
            scale=cfg.scale,
            resolution=cfg.resolution,
            downsample=cfg.downsample,
            steps=cfg.max_steps,
            scaling_factor=round(factor, 6),
            reconstruction=reconstruction,
        )
        vae.to("cpu")
        with atomic_path(layout.autoencoder_model) as tmp:
            vae.save_pretrained(tmp, safe_serialization=True)
            umask_modes(tmp)
            ae.write_info(tmp, info)
        curve = pd.DataFrame(
            {"step": range(1, len(result.losses) + 1), "loss": result.losses, "lr": result.lrs}
        )
        metrics = {"trained": True, "scaling_factor": info.scaling_factor, **reconstruction}
        _write_reports(layout, curve=curve, metrics=metrics, sheet=sheet)
        remove(work_dir)
        if log:
            log(info)
        return info, result

    if not track:
        return finish(ae.train_autoencoder(vae, cfg, images, on_step=on_step, **run_training))

    import mlflow

    from lymphaug.diffusion.track import MetricBuffer, child_run, flat_params

    with child_run(params, layout.root, "autoencoder", fold=layout.fold) as run_id:
        mlflow.log_params({**flat_params("autoencoder", cfg), "train_images": len(train)})
        buffer = MetricBuffer(run_id)

        def log_step(step: int, values: dict[str, float]) -> None:
            buffer.add(step, **values)
            if on_step:
                on_step(step, values)

        try:
            result = ae.train_autoencoder(vae, cfg, images, on_step=log_step, **run_training)
        finally:
            buffer.flush()

        def log(info) -> None:
            for name, values in info.reconstruction.items():
                mlflow.log_metrics({f"{name}_l1": values["l1"], f"{name}_psnr": values["psnr"]})
            mlflow.log_metrics({"scaling_factor": info.scaling_factor})
            for name in (CURVE, METRICS, SHEET):
                mlflow.log_artifact(str(layout.fold_reports / name))

        return finish(result, log)


def _evaluate(vae, cfg, images, train: pd.DataFrame, held_out, val: pd.DataFrame):
    """Reconstruction error on centre crops of every training and validation image, and
    the sheet: a few validation crops per class (training ones if no validation split),
    real above, reconstructed below."""
    from lymphaug.diffusion import autoencoder as ae
    from lymphaug.diffusion.sampling import grid

    reconstruction, shown = {}, {}
    for name, imgs, rows in (("train", images, train), ("val", held_out, val)):
        if not imgs:
            continue
        real = ae.centre_crops(imgs, cfg.resolution)
        recon = ae.reconstruct(vae, real)
        reconstruction[name] = ae.reconstruction_error(real, recon)
        picks = [
            i
            for cls in dict.fromkeys(rows["class"])
            for i in [j for j, c in enumerate(rows["class"]) if c == cls][:SHEET_PER_CLASS]
        ]
        shown = {"real": real[picks], "recon": recon[picks]}
    # thumbnails at least 128 px, so 64 px crops are not too small to judge
    zoom = max(1, 128 // cfg.resolution)

    def big(batch):
        return [a.repeat(zoom, 0).repeat(zoom, 1) for a in ae.to_uint8_images(batch)]

    return reconstruction, grid([big(shown["real"]), big(shown["recon"])])


def run(params: Params, layout: Layout, args) -> int:
    from lymphaug.diffusion.loading import cpu_threads

    start = time.perf_counter()
    with cpu_threads(params.finetune.base_model, params.finetune.num_threads):
        info, result = autoencoder(params, layout, **resume_options(args))
    if result is None:
        print(f"autoencoder: skipped ({info.reason}) -> {layout.autoencoder_model}")
        return 0
    note = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
    errors = ", ".join(
        f"{name} L1 {v['l1']:.2f}/255, PSNR {v['psnr']:.1f} dB"
        for name, v in info.reconstruction.items()
    )
    print(
        f"autoencoder: {len(result.losses)} steps{note}; reconstruction {errors}; "
        f"{time.perf_counter() - start:.1f} s -> {layout.autoencoder_model}"
    )
    return 0
