"""The UNet fine-tuning loop: noise-prediction MSE on (training image, class prompt) pairs.

Follows diffusers' text_to_image examples (frozen VAE and text encoder, DDPM noise,
optional Min-SNR weighting, EMA, 8-bit Adam, gradient checkpointing, fp32 LoRA weights
under fp16/bf16 autocast) with two project-specific choices:

- every random draw of step ``s`` (images, crops, flips, noise, timesteps, prompt dropout)
  comes from a generator seeded by ``(seed, s, micro-batch, process)``, so a resumed run
  needs no RNG state and reproduces the uninterrupted one exactly;
- checkpoints hold only the trainable weights (LoRA: the adapters) plus optimizer,
  scheduler, scaler and EMA state, written atomically under the stage's work folder.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lymphaug.common.config import FinetuneConfig
from lymphaug.common.errors import LymphaugError
from lymphaug.diffusion.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from lymphaug.diffusion.sampling import validation_grid
from lymphaug.diffusion.seeding import step_generator

MAX_GRAD_NORM = 1.0
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class TrainingDiverged(LymphaugError):
    """The loss became NaN or infinite."""


@dataclass
class TrainData:
    """Training images (HxWx3 uint8), their class indices, and one prompt per class index."""

    images: list[np.ndarray]
    labels: list[int]
    prompts: list[str]


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    resumed_from: int = 0
    mixed_precision: str = "no"


def make_accelerator(cfg: FinetuneConfig):
    """An Accelerator for ``cfg``; fp16/bf16 fall back to fp32 on a CPU (with a note)."""
    from accelerate import Accelerator

    mp = cfg.mixed_precision
    if mp != "no" and not torch.cuda.is_available():
        print(f"finetune: mixed_precision={mp} needs a GPU; training in fp32", file=sys.stderr)
        mp = "no"
    return Accelerator(mixed_precision=mp)


def resize_shorter(image: np.ndarray, resolution: int) -> torch.Tensor:
    """Scale so the shorter side is ``resolution`` (bicubic); CxHxW uint8 tensor."""
    h, w = image.shape[:2]
    s = resolution / min(h, w)
    size = (max(resolution, round(w * s)), max(resolution, round(h * s)))
    img = Image.fromarray(image).resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


class Sampler:
    """Epoch-wise shuffled image order plus per-sample random crop and flips, by step."""

    def __init__(self, images: list[torch.Tensor], cfg: FinetuneConfig):
        self.images, self.cfg, self._perms = images, cfg, {}

    def _index(self, k: int) -> int:
        n = len(self.images)
        epoch, pos = divmod(k, n)
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(n, generator=step_generator(self.cfg.seed, epoch))}
        return int(self._perms[epoch][pos])

    def batch(self, first: int, g: torch.Generator) -> tuple[torch.Tensor, list[int]]:
        """Images ``first .. first+batch_size-1`` of the endless shuffled stream, in [-1, 1]."""
        r, out, idx = self.cfg.resolution, [], []
        for k in range(first, first + self.cfg.batch_size):
            i = self._index(k)
            img = self.images[i]
            h, w = img.shape[1:]
            if self.cfg.random_crop:
                top = int(torch.randint(0, h - r + 1, (1,), generator=g))
                left = int(torch.randint(0, w - r + 1, (1,), generator=g))
            else:
                top, left = (h - r) // 2, (w - r) // 2
            img = img[:, top : top + r, left : left + r]
            if self.cfg.random_flip:
                # histology has no canonical orientation: both flips are valid
                flips = torch.rand(2, generator=g)
                if flips[0] < 0.5:
                    img = img.flip(2)
                if flips[1] < 0.5:
                    img = img.flip(1)
            out.append(img)
            idx.append(i)
        return torch.stack(out).float() / 127.5 - 1.0, idx


def _trainable(unet) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in unet.named_parameters() if p.requires_grad}


def _make_optimizer(params, cfg: FinetuneConfig):
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise LymphaugError(
                "finetune.use_8bit_adam needs the bitsandbytes package (CUDA only): "
                "pip install bitsandbytes, or set use_8bit_adam: false"
            ) from None
        return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=1e-2)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-2)


def prompt_embeddings(pipe, prompts: list[str], device, dtype) -> torch.Tensor:
    """Frozen text-encoder output per prompt (computed once; index 0.. = prompts, last = "")."""
    tok = pipe.tokenizer(
        [*prompts, ""],
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return pipe.text_encoder(tok.input_ids.to(device))[0].to(dtype)


def train_unet(
    pipe,
    cfg: FinetuneConfig,
    data: TrainData,
    work_dir: Path,
    accelerator,
    *,
    resume: bool = True,
    resume_from: Path | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    on_validation: Callable[[int, Image.Image], None] | None = None,
) -> TrainResult:
    """Fine-tune ``pipe.unet`` in place for ``cfg.max_steps`` optimizer steps; returns the curve.

    Resumes from the newest checkpoint in ``work_dir/checkpoints`` (or ``resume_from``).
    Raises :class:`TrainingDiverged` on a non-finite loss, leaving the checkpoints intact.
    """
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, cast_training_params, compute_snr

    device = accelerator.device
    mp = accelerator.mixed_precision
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet, vae = pipe.unet, pipe.vae
    vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    vae.to(device, dtype=weight_dtype)
    pipe.text_encoder.to(device, dtype=weight_dtype)
    if cfg.method == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.to(device, dtype=weight_dtype)
        unet.add_adapter(
            LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_rank,
                init_lora_weights="gaussian",
                target_modules=LORA_TARGETS,
            )
        )
        # trainable adapters stay fp32 under fp16 autocast ("Attempting to unscale FP16 gradients")
        cast_training_params(unet, dtype=torch.float32)
    else:
        unet.requires_grad_(True)
        unet.to(device)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = _trainable(unet)
    params = list(trainable.values())
    ema = EMAModel(params, decay=0.999) if cfg.use_ema else None
    if ema is not None:
        ema.to(device)
    optimizer = _make_optimizer(params, cfg)
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=cfg.max_steps,
    )
    model, optimizer = accelerator.prepare(unet, optimizer)
    embeds = prompt_embeddings(pipe, data.prompts, device, weight_dtype)
    sampler = Sampler([resize_shorter(img, cfg.resolution) for img in data.images], cfg)
    labels = torch.tensor(data.labels)

    result = TrainResult(mixed_precision=mp)
    start = 0
    ckpt = resume_from or (latest_checkpoint(work_dir) if resume else None)
    if ckpt is not None:
        start, result.losses, result.lrs = load_checkpoint(
            ckpt, cfg, trainable, optimizer, lr_scheduler, accelerator.scaler, ema
        )
        result.resumed_from = start

    accum, nproc = cfg.gradient_accumulation_steps, accelerator.num_processes
    rank = accelerator.process_index
    bs = cfg.batch_size
    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.max_steps,
        initial=start,
        desc="finetune",
        disable=None if accelerator.is_main_process else True,
    )
    for step in range(start, cfg.max_steps):
        model.train()
        step_loss = 0.0
        for micro in range(accum):
            g = step_generator(cfg.seed, step, micro, rank)
            first = ((step * accum + micro) * nproc + rank) * bs
            pixels, idx = sampler.batch(first, g)
            with torch.no_grad():
                dist = vae.encode(pixels.to(device, dtype=weight_dtype)).latent_dist
                latents = dist.sample(generator=g) * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=g).to(device, latents.dtype)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bs,), generator=g)
            drop = torch.rand(bs, generator=g) < cfg.prompt_dropout
            cond = torch.where(drop, len(data.prompts), labels[idx]).to(device)
            t = t.to(device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, t)
            else:
                target = noise
            sync = micro == accum - 1
            ctx = accelerator.no_sync(model) if not sync else nullcontext()
            with ctx:
                pred = model(noisy, t, encoder_hidden_states=embeds[cond]).sample
                loss = _loss(pred, target, t, cfg, noise_scheduler, compute_snr)
                total = accelerator.gather(loss.detach()).mean()
                if not torch.isfinite(total):
                    bar.close()
                    raise TrainingDiverged(
                        f"fine-tuning loss became {float(total)} at step {step + 1}: training "
                        f"diverged (finetune.learning_rate={cfg.learning_rate:g} too high? fp16 "
                        f"overflow?). Checkpoints kept in {work_dir}; lower the learning rate "
                        "and rerun (--no-resume to start over)"
                    )
                accelerator.backward(loss / accum)
            step_loss += float(total) / accum
        accelerator.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        done = step + 1
        result.losses.append(step_loss)
        result.lrs.append(lr)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if accelerator.is_main_process:
            if on_step:
                on_step(done, step_loss, lr)
            if done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
                save_checkpoint(
                    work_dir,
                    done,
                    cfg,
                    trainable,
                    optimizer,
                    lr_scheduler,
                    accelerator,
                    ema,
                    result,
                )
            if on_validation and done % cfg.validation_every == 0:
                on_validation(done, _validate(pipe, accelerator, model, ema, params, data, cfg))
        accelerator.wait_for_everyone()
    bar.close()
    pipe.unet = accelerator.unwrap_model(model)
    if ema is not None:
        ema.copy_to(params)
    return result


def _loss(pred, target, t, cfg, noise_scheduler, compute_snr):
    if cfg.snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    # Min-SNR weighting (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon prediction
    snr = compute_snr(noise_scheduler, t)
    weight = torch.clamp(snr, max=cfg.snr_gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        weight = weight / (snr + 1)
    else:
        weight = weight / snr
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weight).mean()


def _validate(pipe, accelerator, model, ema, params, data, cfg) -> Image.Image:
    unet = accelerator.unwrap_model(model)
    unet.eval()
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    original = pipe.unet
    pipe.unet = unet
    try:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision)
        with (
            torch.no_grad(),
            torch.autocast(
                accelerator.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ),
        ):
            return validation_grid(pipe, data.prompts, cfg.seed)
    finally:
        pipe.unet = original
        if ema is not None:
            ema.restore(params)
        unet.train()
