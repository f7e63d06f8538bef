"""The from-scratch generator's first stage: an AutoencoderKL trained to reconstruct crops.

As Stable Diffusion's first stage (Rombach et al. 2022) without its perceptual and
adversarial terms: a pixel loss (L1 or MSE) plus a small KL term that keeps the latent
distribution near a standard normal, so the UNet of the second phase gets a well-behaved
latent space. Every random draw of step ``s`` (images, crops, flips, the posterior sample)
comes from a generator seeded by ``(seed, s)``, so a resumed run needs no RNG state and
ends with the uninterrupted run's bytes; checkpoints are :mod:`.checkpoints`' own.

After training, the latents' standard deviation over training crops sets the VAE's
``scaling_factor`` (SD v1's 0.18215 was found the same way), so the UNet sees unit-variance
latents.

``models/autoencoder`` holds the AutoencoderKL (``save_pretrained``: config.json and
safetensors) and ``lymphaug_autoencoder.json`` (:class:`AutoencoderInfo`). For a base that
brings its own VAE, it holds only the description, with ``trained: false``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lymphaug.common.config import AutoencoderConfig
from lymphaug.common.errors import DataError
from lymphaug.common.progress import progress
from lymphaug.diffusion.checkpoints import TrainingState, resume_state, save_checkpoint
from lymphaug.diffusion.seeding import step_generator
from lymphaug.diffusion.training import MAX_GRAD_NORM, Sampler, TrainingDiverged

INFO_FILE = "lymphaug_autoencoder.json"
LATENT_STD_BATCHES = 8  # batches of training crops that set the scaling factor
_EVAL_STEP = 10**6  # a pseudo-step: evaluation crops never coincide with a training step's


@dataclass(frozen=True)
class AutoencoderInfo:
    """What ``models/autoencoder`` holds; written by the autoencoder stage, read by finetune."""

    trained: bool
    reason: str = ""
    scale: float = 1.0
    resolution: int = 0
    downsample: int = 0
    steps: int = 0
    scaling_factor: float = 0.0
    reconstruction: dict = field(default_factory=dict)  # split -> {"l1", "psnr"}


@dataclass
class AutoencoderResult:
    """Per step: the pixel loss (the reconstruction error), the KL term and the learning rate."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    resumed_from: int = 0


def write_info(model_dir: Path, info: AutoencoderInfo) -> None:
    text = json.dumps(asdict(info), indent=2, sort_keys=True) + "\n"
    (model_dir / INFO_FILE).write_text(text)


def read_info(model_dir: Path) -> AutoencoderInfo:
    path = model_dir / INFO_FILE
    if not path.is_file():
        raise DataError(
            f"{model_dir}: no trained autoencoder (no {INFO_FILE}); run "
            "`lymphaug autoencoder` (or `dvc repro autoencoder`)"
        )
    try:
        return AutoencoderInfo(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise DataError(f"{path}: unreadable autoencoder description ({err})") from None


def load_trained(model_dir: Path):
    """The trained AutoencoderKL and its description (safetensors only: nothing runs)."""
    from diffusers import AutoencoderKL

    from lymphaug.diffusion.loading import check_pickles

    info = read_info(model_dir)
    if not info.trained:
        raise DataError(
            f"{model_dir}: holds no trained autoencoder ({info.reason}); with "
            "finetune.base_model: scratch rerun `lymphaug autoencoder`"
        )
    check_pickles(model_dir, "the autoencoder")
    try:
        vae = AutoencoderKL.from_pretrained(model_dir, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise DataError(f"{model_dir}: cannot load the autoencoder ({err})") from None
    return vae, info


def _pixel_loss(kind: str, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(recon, target) if kind == "l1" else F.mse_loss(recon, target)


def train_autoencoder(
    vae,
    cfg: AutoencoderConfig,
    images: list[torch.Tensor],
    *,
    work_dir: Path,
    device: str = "cpu",
    resume: bool = True,
    resume_from: Path | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> AutoencoderResult:
    """Train ``vae`` in place on random crops of ``images`` (CxHxW uint8, already rescaled).

    Resumes from the newest checkpoint in ``work_dir/checkpoints``; raises
    :class:`TrainingDiverged` naming the phase and step on a non-finite loss.
    """
    from diffusers.optimization import get_scheduler

    vae.to(device).train()
    vae.requires_grad_(True)
    trainable = dict(vae.named_parameters())
    params = list(trainable.values())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    # a short linear warm-up, then cosine decay: the last steps sharpen the reconstructions
    lr_scheduler = get_scheduler(
        "cosine",
        optimizer=optimizer,
        num_warmup_steps=min(100, cfg.max_steps // 10),
        num_training_steps=cfg.max_steps,
    )
    state = TrainingState(
        trainable=trainable, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=None, ema=None
    )
    result = AutoencoderResult()
    # Resume: weights, optimizer, schedule and the curve so far
    start, result.losses, result.lrs = resume_state(
        work_dir, cfg, state, resume=resume, resume_from=resume_from, stage="autoencoder"
    )
    result.resumed_from = start
    sampler = Sampler(images, resolution=cfg.resolution, batch_size=cfg.batch_size, seed=cfg.seed)
    bar = progress(total=cfg.max_steps, initial=start, desc="autoencoder", unit="step")
    for step in range(start, cfg.max_steps):
        # Every random draw of this step comes from a generator seeded by (seed, step)
        generator = step_generator(cfg.seed, step)
        # The next images of the shuffled stream, cropped and flipped, in [-1, 1]
        pixels, _ = sampler.batch(step * cfg.batch_size, generator)
        pixels = pixels.to(device)
        # Encode to the latent posterior and sample from it (the reparameterisation trick)
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.sample(generator=generator)
        # Decode and compare with the input: the pixel loss is the reconstruction error
        recon = vae.decode(latents).sample
        pixel = _pixel_loss(cfg.pixel_loss, recon.float(), pixels)
        # The KL term pulls the posterior towards N(0, I) (summed over latents, mean over images)
        kl = posterior.kl().mean()
        loss = pixel + cfg.kl_weight * kl
        # Stop on NaN or inf, naming the phase and the step
        if not torch.isfinite(loss):
            bar.close()
            raise TrainingDiverged(
                f"autoencoder phase: loss became {loss.item()} at step {step + 1}: training "
                f"diverged (autoencoder.learning_rate={cfg.learning_rate:g} too high?). "
                f"Checkpoints kept in {work_dir}; lower the learning rate and rerun "
                "(--no-resume to start over)"
            )
        # Backpropagate, clip the gradient norm, step the optimizer and the schedule
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        # Record the step on the curve and the progress bar
        done = step + 1
        pixel_error = float(pixel.detach())
        result.losses.append(pixel_error)
        result.lrs.append(lr)
        bar.update(1)
        bar.set_postfix(pixel=f"{pixel_error:.4f}")
        if on_step:
            on_step(done, {"reconstruction": pixel_error, "kl": float(kl.detach()), "lr": lr})
        # Save a checkpoint (not after the last step: the finished model is saved instead)
        if done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
            save_checkpoint(work_dir, done, cfg, state, losses=result.losses, lrs=result.lrs)
    bar.close()
    vae.eval()
    vae.requires_grad_(False)
    return result


@torch.no_grad()
def set_scaling_factor(vae, cfg: AutoencoderConfig, images: list[torch.Tensor]) -> float:
    """Scale latents to unit variance: 1 / their std over training crops (posterior means)."""
    sampler = Sampler(images, resolution=cfg.resolution, batch_size=cfg.batch_size, seed=cfg.seed)
    device = next(vae.parameters()).device
    latents = []
    for b in range(LATENT_STD_BATCHES):
        pixels, _ = sampler.batch(b * cfg.batch_size, step_generator(cfg.seed, _EVAL_STEP, b))
        latents.append(vae.encode(pixels.to(device)).latent_dist.mode().float().cpu())
    factor = float(1.0 / torch.cat(latents).std())
    vae.register_to_config(scaling_factor=factor)
    return factor


def centre_crops(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """The centre ``size`` square of each CxHxW uint8 image, in [-1, 1]."""
    out = []
    for img in images:
        height, width = img.shape[1:]
        top, left = (height - size) // 2, (width - size) // 2
        out.append(img[:, top : top + size, left : left + size])
    return torch.stack(out).float() / 127.5 - 1.0


@torch.no_grad()
def reconstruct(vae, pixels: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Decode the posterior mean of each image (deterministic), clamped to [-1, 1]."""
    device = next(vae.parameters()).device
    out = []
    for i in range(0, len(pixels), batch):
        x = pixels[i : i + batch].to(device)
        out.append(vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1).float().cpu())
    return torch.cat(out)


def reconstruction_error(real: torch.Tensor, recon: torch.Tensor) -> dict[str, float]:
    """Mean absolute error in 8-bit grey levels (0-255) and PSNR in dB, over all images."""
    real8 = (real + 1) * 127.5
    recon8 = (recon + 1) * 127.5
    l1 = float((real8 - recon8).abs().mean())
    mse = float(((real8 - recon8) ** 2).mean())
    psnr = float(10 * np.log10(255.0**2 / max(mse, 1e-12)))
    return {"l1": round(l1, 4), "psnr": round(psnr, 3), "images": len(real)}


def to_uint8_images(batch: torch.Tensor) -> list[np.ndarray]:
    """[-1, 1] NxCxHxW -> HxWx3 uint8 arrays."""
    arr = ((batch.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return list(arr.numpy())
