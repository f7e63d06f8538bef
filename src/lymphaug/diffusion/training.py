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

import contextlib
import io
import sys
import time
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
from lymphaug.common.progress import progress
from lymphaug.diffusion.checkpoints import TrainingState, resume_state, save_checkpoint
from lymphaug.diffusion.sampling import validation_grid
from lymphaug.diffusion.seeding import LORA_INIT_STEP, derived_seed, seeded, step_generator

MAX_GRAD_NORM = 1.0
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # by accelerate's mixed_precision
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class TrainingDiverged(LymphaugError):
    """The loss became NaN or infinite."""


class TooSlowOnCpu(LymphaugError):
    """The first step says the run would take longer on this CPU than allowed."""


def check_cpu_time(seconds: float, steps: int, cfg: FinetuneConfig, device: str) -> None:
    """Stop before paying for a run a CPU cannot finish in ``finetune.max_cpu_hours``.

    ``seconds``: the first of this run's ``steps`` (warm-up included: the estimate is a
    little high). A Stable Diffusion-size model takes 7 s or more per step on a CPU: the
    paper profile's 3000 steps of 4 micro-batches would take days.
    """
    hours = seconds * steps / 3600
    if device != "cpu" or hours <= cfg.max_cpu_hours:
        return
    raise TooSlowOnCpu(
        f"the first step took {seconds:.1f} s on the CPU, so the {steps} steps to go would "
        f"take about {hours:.1f} h (finetune.max_cpu_hours="
        f"{cfg.max_cpu_hours:g}); run it on a GPU, lower finetune.max_steps or "
        "finetune.resolution, or train the from-scratch generator on this CPU "
        "(finetune.base_model: scratch, as the quick and cpu profiles); to wait, raise "
        "finetune.max_cpu_hours"
    )


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
    """fp16/bf16 autocast only helps on a GPU, so a CPU run trains in fp32 (with a note)."""
    from accelerate import Accelerator

    mixed_precision = cfg.mixed_precision
    if mixed_precision != "no" and not torch.cuda.is_available():
        print(
            f"finetune: mixed_precision={mixed_precision} needs a GPU; training in fp32",
            file=sys.stderr,
        )
        mixed_precision = "no"
    return Accelerator(mixed_precision=mixed_precision)


def resize_shorter(image: np.ndarray, resolution: int) -> torch.Tensor:
    """Resize once up front (bicubic, shorter side = ``resolution``) so each step only crops.

    Returns a CxHxW uint8 tensor; every ``resolution`` x ``resolution`` crop of it fits.
    """
    height, width = image.shape[:2]
    scale = resolution / min(height, width)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    resized = Image.fromarray(image).resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)


def rescaled(image: np.ndarray, scale: float) -> torch.Tensor:
    """The from-scratch generator's input: the whole image rescaled by ``scale`` (bicubic,
    as the classifier rescales by train.scale), so a crop keeps the tissue's pixel scale.

    Returns a CxHxW uint8 tensor.
    """
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != (width, height):
        image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


class Sampler:
    """Training images addressed by position in an endless, epoch-wise shuffled stream.

    The order and the crops and flips depend only on the seed and the position, never on
    what was drawn before, so a resumed run sees exactly the images it would have seen.
    """

    def __init__(
        self,
        images: list[torch.Tensor],
        *,
        resolution: int,
        batch_size: int,
        seed: int,
        random_crop: bool = True,
        random_flip: bool = True,
    ):
        self.images, self._perms = images, {}
        self.resolution, self.batch_size, self.seed = resolution, batch_size, seed
        self.random_crop, self.random_flip = random_crop, random_flip

    def _index(self, k: int) -> int:
        n = len(self.images)
        epoch, pos = divmod(k, n)
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(n, generator=step_generator(self.seed, epoch))}
        return int(self._perms[epoch][pos])

    def batch(self, first: int, generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
        """Stream positions ``first .. first+batch_size-1`` in [-1, 1], and their image indices.

        Crops and flips are drawn from ``generator`` (the caller's per-step generator).
        """
        crop, out, indices = self.resolution, [], []
        for k in range(first, first + self.batch_size):
            i = self._index(k)
            img = self.images[i]
            height, width = img.shape[1:]
            if self.random_crop:
                top = int(torch.randint(0, height - crop + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - crop + 1, (1,), generator=generator))
            else:
                top, left = (height - crop) // 2, (width - crop) // 2
            img = img[:, top : top + crop, left : left + crop]
            if self.random_flip:
                # histology has no canonical orientation: both flips are valid
                flips = torch.rand(2, generator=generator)
                if flips[0] < 0.5:
                    img = img.flip(2)
                if flips[1] < 0.5:
                    img = img.flip(1)
            out.append(img)
            indices.append(i)
        return torch.stack(out).float() / 127.5 - 1.0, indices


def _trainable(unet) -> dict[str, torch.nn.Parameter]:
    """By name, so a checkpoint can hold just these and be matched against the model."""
    return {name: p for name, p in unet.named_parameters() if p.requires_grad}


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
    """The text encoder is frozen, so each prompt is encoded once, before training.

    Rows 0.. are ``prompts`` (by class index); the last row is the empty prompt that
    prompt dropout substitutes.
    """
    tokens = pipe.tokenizer(
        [*prompts, ""],
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return pipe.text_encoder(tokens.input_ids.to(device))[0].to(dtype)


def _prepare_models(pipe, cfg: FinetuneConfig, *, device, weight_dtype):
    """Freeze and place the pipeline's parts for training; returns the UNet to train.

    Frozen parts run in ``weight_dtype`` (fp16/bf16 under mixed precision) to save memory;
    what is trained stays fp32 so the optimizer and gradient scaler see fp32 weights.
    """
    from diffusers.training_utils import cast_training_params

    unet, vae = pipe.unet, pipe.vae
    # The VAE and text encoder are only used for inference: freeze them
    vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    vae.to(device, dtype=weight_dtype)
    pipe.text_encoder.to(device, dtype=weight_dtype)
    if cfg.method == "lora":
        from peft import LoraConfig

        # Freeze the UNet and add trainable LoRA adapters to its attention projections; peft
        # draws their initial weights from torch's global generator: seed it from
        # finetune.seed for this call only, so two runs start from the same adapter
        unet.requires_grad_(False)
        unet.to(device, dtype=weight_dtype)
        with seeded(derived_seed(cfg.seed, LORA_INIT_STEP)):
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
        # Train every UNet weight, kept in fp32
        unet.requires_grad_(True)
        unet.to(device)
    if cfg.gradient_checkpointing:
        # Recompute activations in the backward pass instead of storing them (less memory)
        unet.enable_gradient_checkpointing()
    return unet


def train_unet(
    pipe,
    cfg: FinetuneConfig,
    data: TrainData,
    *,
    work_dir: Path,
    accelerator,
    resume: bool = True,
    resume_from: Path | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    on_validation: Callable[[int, Image.Image], None] | None = None,
    scale: float | None = None,
) -> TrainResult:
    """Fine-tune ``pipe.unet`` in place for ``cfg.max_steps`` optimizer steps; returns the curve.

    Resumes from the newest checkpoint in ``work_dir/checkpoints`` (or ``resume_from``) so an
    interrupted run continues where it stopped and ends with the same weights. Raises
    :class:`TrainingDiverged` on a non-finite loss, leaving the checkpoints intact.

    ``scale`` (the from-scratch UNet): crop the images rescaled by it, at their pixel scale,
    and warm the EMA up (its decay grows with the step, so a short run from random weights
    is not averaged with them); None: shorter side resized to the resolution, as before.
    """
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    device = accelerator.device
    mixed_precision = accelerator.mixed_precision
    weight_dtype = HALF_DTYPES.get(mixed_precision, torch.float32)
    # The noise schedule of the forward diffusion process (the one the base model learned)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet = _prepare_models(pipe, cfg, device=device, weight_dtype=weight_dtype)
    vae = pipe.vae
    trainable = _trainable(unet)
    params = list(trainable.values())
    # An exponential moving average of the trainable weights, used for validation and the result
    ema = None
    if cfg.use_ema:
        ema = EMAModel(params, decay=0.999, use_ema_warmup=scale is not None, power=2 / 3)
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
    if scale is None:
        images = [resize_shorter(img, cfg.resolution) for img in data.images]
    else:
        images = [rescaled(img, scale) for img in data.images]
    sampler = Sampler(
        images,
        resolution=cfg.resolution,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        random_crop=cfg.random_crop,
        random_flip=cfg.random_flip,
    )
    labels = torch.tensor(data.labels)

    # Resume: restore weights, optimizer, scheduler, scaler, EMA and the curve so far
    state = TrainingState(
        trainable=trainable,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        scaler=accelerator.scaler,
        ema=ema,
    )
    result = TrainResult(mixed_precision=mixed_precision)
    # (the newest intact checkpoint: a truncated or missing one falls back to the one before;
    # only the main process says so)
    quiet = not accelerator.is_main_process
    with contextlib.redirect_stderr(io.StringIO()) if quiet else nullcontext():
        start, result.losses, result.lrs = resume_state(
            work_dir, cfg, state, resume=resume, resume_from=resume_from, stage="finetune"
        )
    result.resumed_from = start

    accum_steps = cfg.gradient_accumulation_steps
    num_processes, rank = accelerator.num_processes, accelerator.process_index
    batch_size = cfg.batch_size
    bar = progress(
        total=cfg.max_steps,
        initial=start,
        desc="finetune",
        unit="step",
        main_process=accelerator.is_main_process,
    )
    for step in range(start, cfg.max_steps):
        started = time.perf_counter()
        model.train()
        step_loss = 0.0
        for micro in range(accum_steps):
            # Every random draw of this micro-batch comes from a generator seeded by
            # (seed, step, micro-batch, process), so a resumed run needs no RNG state
            generator = step_generator(cfg.seed, step, micro, rank)
            # This process's images: the next slice of the shuffled stream, cropped and flipped
            first = ((step * accum_steps + micro) * num_processes + rank) * batch_size
            pixels, image_indices = sampler.batch(first, generator)
            # Convert images to latent space
            with torch.no_grad():
                latent_dist = vae.encode(pixels.to(device, dtype=weight_dtype)).latent_dist
                latents = latent_dist.sample(generator=generator) * vae.config.scaling_factor
            # Sample noise that we'll add to the latents
            noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
            # Sample a random timestep for each image
            timesteps = torch.randint(
                0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator
            )
            # Choose each image's prompt: its class's, or with probability prompt_dropout the
            # empty one, so the model also learns the unconditional case (classifier-free guidance)
            dropped = torch.rand(batch_size, generator=generator) < cfg.prompt_dropout
            prompt_rows = torch.where(dropped, len(data.prompts), labels[image_indices]).to(device)
            timesteps = timesteps.to(device)
            # Add noise to the latents according to the noise magnitude at each timestep
            # (this is the forward diffusion process)
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            # Get the target for loss depending on the prediction type
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise
            # Synchronise gradients across processes only on the last micro-batch of the step
            is_last_micro = micro == accum_steps - 1
            sync_context = accelerator.no_sync(model) if not is_last_micro else nullcontext()
            with sync_context:
                # Get the text embedding for conditioning (precomputed, one row per prompt)
                text_embeds = embeds[prompt_rows]
                # Predict the noise residual and compute loss
                model_pred = model(
                    noisy_latents, timesteps, encoder_hidden_states=text_embeds
                ).sample
                loss = _loss(
                    model_pred,
                    target,
                    timesteps=timesteps,
                    snr_gamma=cfg.snr_gamma,
                    noise_scheduler=noise_scheduler,
                )
                # Gather the losses across all processes for logging; stop on NaN or inf
                mean_loss = accelerator.gather(loss.detach()).mean()
                if not torch.isfinite(mean_loss):
                    bar.close()
                    raise TrainingDiverged(
                        f"finetune (UNet phase): loss became {float(mean_loss)} at step "
                        f"{step + 1}: "
                        f"training diverged (finetune.learning_rate={cfg.learning_rate:g} too "
                        f"high? fp16 overflow?). Checkpoints kept in {work_dir}; lower the "
                        "learning rate and rerun (--no-resume to start over)"
                    )
                # Backpropagate (scaled so the accumulated gradient is the micro-batches' mean)
                accelerator.backward(loss / accum_steps)
            step_loss += float(mean_loss) / accum_steps
        # Clip the gradient norm
        accelerator.clip_grad_norm_(params, MAX_GRAD_NORM)
        # Take the optimizer step at this step's learning rate, then advance the schedule
        lr = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        # Update the EMA weights
        if ema is not None:
            ema.step(params)
        # After this run's first step: stop now if the whole run cannot finish on a CPU
        if step == start:
            try:
                seconds = time.perf_counter() - started
                check_cpu_time(seconds, cfg.max_steps - start, cfg, device.type)
            except TooSlowOnCpu:
                bar.close()
                raise
        # Record the step on the curve and the progress bar
        done = step + 1
        result.losses.append(step_loss)
        result.lrs.append(lr)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if accelerator.is_main_process:
            if on_step:
                on_step(done, step_loss, lr)
            # Save a checkpoint (not after the last step: the finished model is saved instead)
            if done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
                save_checkpoint(work_dir, done, cfg, state, losses=result.losses, lrs=result.lrs)
            # Sample a validation grid of every class
            if on_validation and done % cfg.validation_every == 0:
                grid = _validate(
                    pipe,
                    accelerator,
                    model=model,
                    ema=ema,
                    params=params,
                    prompts=data.prompts,
                    cfg=cfg,
                )
                on_validation(done, grid)
        # Let the other processes catch up (checkpoint, validation) before the next step
        accelerator.wait_for_everyone()
    bar.close()
    # Hand back the trained UNet, holding the EMA weights when EMA is on
    pipe.unet = accelerator.unwrap_model(model)
    if ema is not None:
        ema.copy_to(params)
    return result


def _loss(pred, target, *, timesteps, snr_gamma: float | None, noise_scheduler) -> torch.Tensor:
    """MSE; with ``snr_gamma``, Min-SNR weighted so that the many easy, low-noise timesteps
    do not dominate the gradient (faster convergence)."""
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    from diffusers.training_utils import compute_snr

    # Min-SNR weighting (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon prediction
    snr = compute_snr(noise_scheduler, timesteps)
    weight = torch.clamp(snr, max=snr_gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        weight = weight / (snr + 1)
    else:
        weight = weight / snr
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weight).mean()


def _validate(
    pipe, accelerator, *, model, ema, params, prompts: list[str], cfg: FinetuneConfig
) -> Image.Image:
    """Sample with the weights being trained (EMA ones if on), then put training back as it was.

    The same seeds at every validation make the grids comparable across steps.
    """
    unet = accelerator.unwrap_model(model)
    unet.eval()
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    original = pipe.unet
    pipe.unet = unet
    try:
        dtype = HALF_DTYPES.get(accelerator.mixed_precision)
        with (
            torch.no_grad(),
            torch.autocast(
                accelerator.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ),
        ):
            return validation_grid(
                pipe, prompts, cfg.seed, resolution=cfg.resolution, steps=cfg.validation_steps
            )
    finally:
        pipe.unet = original
        if ema is not None:
            ema.restore(params)
        unet.train()
