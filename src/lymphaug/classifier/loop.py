"""The training loop: per-epoch train/val loss and accuracy, resumable checkpoints.

A checkpoint (model, optimiser, learning-rate schedule, epoch, both RNG states, history,
best epoch) is written atomically after every epoch, so an interrupted run resumed from it
ends bit-identical to an uninterrupted one on CPU. With a frozen backbone the body runs
under ``torch.no_grad`` and only the head builds an autograd graph.

Optimisation as for small data sets trained from scratch: AdamW without decay on norms
and biases (decaying a BatchNorm scale only fights the normalisation), a linear warm-up
then cosine decay per optimiser step, label smoothing. ``adam`` + ``constant`` is the
study's recipe.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as nnf

from lymphaug.classifier.data import ImageSet
from lymphaug.classifier.evaluate import eval_views, predict_proba
from lymphaug.classifier.model import Classifier, autocast, device_of
from lymphaug.classifier.transforms import (
    PatchAugment,
    augment_patches,
    normalize,
    random_crops,
    random_patches,
)
from lymphaug.common.config import TrainConfig
from lymphaug.common.errors import LymphaugError, one_line
from lymphaug.common.files import atomic_path
from lymphaug.common.progress import progress

CHECKPOINT = "checkpoint.pt"
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")


class TrainingError(LymphaugError):
    """Training cannot go on (diverged, or an incompatible checkpoint)."""


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    finished: bool = True
    resumed_from: int = 0
    extra: dict = field(default_factory=dict)


def set_determinism(num_threads: int = 0) -> None:
    """Deterministic kernels where torch has them (CPU ones mostly are)."""
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _meta(model: Classifier, classes: list[str], frozen: bool) -> dict:
    return {
        "arch": model.arch,
        "classes": list(classes),
        "num_classes": model.head.out_features,
        "frozen": frozen,
    }


def save_checkpoint(path: Path, state: dict) -> None:
    # through a Python file: a full disk is then an OSError (atomic_path names the file),
    # not torch's "enforce fail at inline_container.cc ... unexpected pos"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: Path, model: Classifier, classes: list[str], frozen: bool) -> dict:
    """Read a checkpoint and check it belongs to this architecture and class list."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, or a pickle that would run code: weights_only refuses
        msg = f"{path}: unreadable checkpoint ({one_line(err)}); delete it or --no-resume"
        raise TrainingError(msg) from None
    want = _meta(model, classes, frozen)
    got = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if got != want:
        raise TrainingError(
            f"{path}: checkpoint is for {got}, not {want} (another architecture or class "
            "list); delete it or run with --no-resume"
        )
    return ckpt


def make_optimizer(
    named_params: list[tuple[str, torch.nn.Parameter]], cfg: TrainConfig
) -> torch.optim.Optimizer:
    """Adam (the study; L2 ``weight_decay``) or AdamW (decoupled decay on weights only).

    Fused where torch has it (4x faster steps for AlexNet's 57M weights on CPU).
    """
    if cfg.optimizer == "adamw":
        # one-dimensional parameters are norm scales/shifts and biases: no decay
        groups = [
            {
                "params": [p for _, p in named_params if p.ndim > 1],
                "weight_decay": cfg.weight_decay,
            },
            {"params": [p for _, p in named_params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        try:
            return torch.optim.AdamW(groups, cfg.learning_rate, fused=True)
        except (RuntimeError, ValueError):
            return torch.optim.AdamW(groups, cfg.learning_rate)
    params = [p for _, p in named_params]
    lr, wd = cfg.learning_rate, cfg.weight_decay
    try:
        return torch.optim.Adam(params, lr, weight_decay=wd, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr, weight_decay=wd)


def lr_factor(step: int, *, total_steps: int, warmup_fraction: float, schedule: str) -> float:
    """The learning-rate multiplier at optimiser step ``step`` (0-based).

    Linear warm-up over ``warmup_fraction`` of the steps (from 1/warm-up steps to 1),
    then constant or cosine decay to zero at ``total_steps``.
    """
    warmup = round(warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def samples_per_epoch(data: ImageSet, cfg: TrainConfig) -> int:
    """Training samples an epoch draws, ``patches_per_image`` per image it counts.

    ``budget: epochs`` counts every training image, augmented ones included (the study:
    a condition with three times the images gets three times the steps);
    ``budget: real_epochs`` counts the real images only, so every condition gets the
    same number of optimiser steps.
    """
    counted = data.real_count if cfg.budget == "real_epochs" else len(data)
    return counted * cfg.patches_per_image


def steps_for_images(n_images: int, cfg: TrainConfig) -> int:
    """Optimiser steps of one epoch that counts ``n_images`` images."""
    return math.ceil(n_images * cfg.patches_per_image / cfg.batch_size)


def steps_per_epoch(data: ImageSet, cfg: TrainConfig) -> int:
    return steps_for_images(samples_per_epoch(data, cfg) // cfg.patches_per_image, cfg)


def epoch_order(data: ImageSet, cfg: TrainConfig, generator: torch.Generator) -> list[int]:
    """The image index of each sample of one epoch, shuffled with the run's generator.

    ``budget: epochs``, or a set of real images only: a permutation of every image
    ``patches_per_image`` times. ``budget: real_epochs`` with augmented images: the real
    images' permutation, each sample replaced with probability ``augmented_fraction`` by an
    augmented image drawn uniformly (DA-Fusion's scheme), so the epoch length and the
    share of augmented images do not depend on how many augmented images there are.
    """
    n_samples = samples_per_epoch(data, cfg)
    n_real, n_extra = data.real_count, len(data) - data.real_count
    if cfg.budget == "epochs" or n_extra == 0:
        counted = len(data) if cfg.budget == "epochs" else n_real
        return (torch.randperm(n_samples, generator=generator) % counted).tolist()
    real = torch.randperm(n_samples, generator=generator) % n_real
    swap = torch.rand(n_samples, generator=generator) < cfg.augmented_fraction
    extra = n_real + torch.randint(n_extra, (n_samples,), generator=generator)
    return torch.where(swap, extra, real).tolist()


def _trained(model: Classifier, frozen: bool) -> torch.nn.Module:
    """What training changes: the head alone when the body is frozen (small checkpoints)."""
    return model.head if frozen else model


def restore_best(model: Classifier, result: FitResult, frozen: bool) -> None:
    _trained(model, frozen).load_state_dict(result.best_state)


def _evaluate(
    model: Classifier,
    views: list[Sequence[torch.Tensor]],
    labels: torch.Tensor,
    *,
    batch: int,
    precision: str,
) -> tuple[float, float]:
    """(mean negative log-likelihood, accuracy) on precomputed evaluation views.

    The loss is that of the averaged probabilities, so with one view per image it is the
    usual cross-entropy and with a grid it scores the prediction actually made.
    """
    probs = torch.from_numpy(predict_proba(model, views, batch=batch, precision=precision))
    nll = -torch.log(probs[torch.arange(len(labels)), labels].clamp_min(1e-12))
    return float(nll.mean()), float((probs.argmax(1) == labels).double().mean())


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless torch.distributed was initialised (torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(values: list[float], world_size: int) -> list[float]:
    if world_size == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _train_epoch(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    data: ImageSet,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    generator: torch.Generator,
    epoch: int,
    frozen: bool,
) -> tuple[float, float]:
    """One epoch; returns (mean training loss, training accuracy).

    Under torchrun every rank draws the same order and crops (same seeded generator),
    takes its own slice of each batch, and gradients are summed across ranks, so the
    ranks stay identical and a batch's gradient is that of the whole batch.
    """
    rank, world_size = world()
    device = device_of(model)
    model.train()
    # Shuffle the training samples (patches_per_image per image, augmented images mixed in
    # as the budget says) with the run's own generator: resumable, the same on every rank
    order = epoch_order(data, cfg, generator)
    augment = PatchAugment(
        dihedral=cfg.dihedral,
        hed_sigma=cfg.hed_jitter,
        brightness=cfg.brightness,
        contrast=cfg.contrast,
        saturation=cfg.saturation,
    )
    total, correct, seen = 0.0, 0, 0
    batches = range(0, len(order), cfg.batch_size)
    bar = progress(
        batches,
        desc=f"epoch {epoch}/{cfg.epochs}",
        unit="batch",
        inner=True,
        main_process=rank == 0,
    )
    for start in bar:
        batch_idx = order[start : start + cfg.batch_size]
        images = [data.images[i] for i in batch_idx]
        if cfg.patch_size is not None:
            # Random patches at full resolution, then symmetries, stain and colour jitter
            crops = augment_patches(
                random_patches(images, cfg.patch_size, generator), augment, generator
            )
        else:
            # The study's input: random resized crops of the whole image and flips
            crops = random_crops(images, cfg.input_size, generator, cfg.vflip)
        # This rank's share of the batch, normalised and moved to the model's device
        idx = batch_idx[rank::world_size]
        x = normalize(crops[rank::world_size]).to(device, non_blocking=True)
        y = data.labels[idx].to(device)
        # Forward pass; a frozen body runs without autograd, so only the head learns
        if frozen:
            with torch.no_grad(), autocast(cfg.precision, device):
                features = model.body(x).float()
            logits = model.head(features)
        else:
            with autocast(cfg.precision, device):
                logits = model(x).float()
        # Cross-entropy (= LogSoftmax + NLLLoss, as in the study), summed over this share;
        # label smoothing keeps a small data set from being fitted with total confidence
        loss_sum = nnf.cross_entropy(
            logits, y, reduction="sum", label_smoothing=cfg.label_smoothing
        )
        # Whole-batch loss and hits, summed over ranks, for the log and the NaN check
        batch_loss, batch_correct = _all_reduce(
            [loss_sum.item(), (logits.argmax(1) == y).sum().item()], world_size
        )
        if not math.isfinite(batch_loss):
            raise TrainingError(
                f"loss became {batch_loss} at epoch {epoch}, batch {start // cfg.batch_size + 1}"
                f"; lower train.learning_rate (now {cfg.learning_rate})"
            )
        # Backpropagate the whole batch's mean loss (ranks sum their gradients), then step
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / len(batch_idx)).backward()
        if world_size > 1:
            _sum_gradients(optimizer)
        optimizer.step()
        # Advance the learning-rate schedule once per optimiser step
        scheduler.step()
        total += batch_loss
        correct += int(batch_correct)
        seen += len(batch_idx)
        bar.set_postfix(loss=f"{total / seen:.3f}")
    return total / seen, correct / seen


def _sum_gradients(opt: torch.optim.Optimizer) -> None:
    import torch.distributed as dist

    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def fit(
    model: Classifier,
    train: ImageSet,
    val: ImageSet,
    *,
    cfg: TrainConfig,
    seed: int,
    classes: list[str],
    work_dir: Path | None = None,
    resume: bool = True,
    stop_after_epoch: int | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train for ``cfg.epochs``; keep the epoch with the best validation accuracy.

    ``model`` must be freshly built after ``torch.manual_seed(seed)``. With
    ``work_dir`` a checkpoint is written there after every epoch and, if ``resume``,
    picked up again. ``stop_after_epoch`` ends early (tests use it to simulate a kill).
    """
    frozen = cfg.freeze_backbone
    if frozen:
        model.freeze_body()
    model.to(memory_format=torch.channels_last)
    # Optimise what training changes: the new head alone, or the whole network
    trained = _trained(model, frozen)
    optimizer = make_optimizer(list(trained.named_parameters()), cfg)
    # Warm-up and decay per optimiser step over the whole run (epochs x steps per epoch)
    total_steps = cfg.epochs * steps_per_epoch(train, cfg)

    def factor(step: int) -> float:
        return lr_factor(
            step,
            total_steps=total_steps,
            warmup_fraction=cfg.warmup_fraction,
            schedule=cfg.lr_schedule,
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    # One seeded generator draws the shuffles and crops; dropout uses the global RNG
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    # Validation views (centre crop, whole image or patch grid) are prepared once
    val_views = eval_views(val.images, cfg)
    history: list[dict[str, float]] = []
    best_epoch, best_acc, best_state = 0, -1.0, {}
    start = 1
    ckpt_path = work_dir / CHECKPOINT if work_dir else None
    writer = world()[0] == 0  # under torchrun only rank 0 writes; every rank may resume
    # Resume: weights, optimiser, both RNG states, history and best epoch, as they were
    if ckpt_path and resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, model, classes, frozen)
        try:
            _trained(model, frozen).load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise TrainingError(f"{ckpt_path}: does not fit the model ({err})") from None
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])  # GPU dropout draws
        history = list(ckpt["history"])
        best_epoch, best_acc, best_state = ckpt["best_epoch"], ckpt["best_acc"], ckpt["best_state"]
        if best_state is None:
            best_state = copy.deepcopy(ckpt["model"])
        start = ckpt["epoch"] + 1
        for row in history:  # replay the finished epochs to the logger
            if on_epoch:
                on_epoch(row)
    resumed_from = start - 1
    # One line per interval in a log, a live bar on a terminal: epochs, rate, ETA, val accuracy
    epochs = progress(
        total=cfg.epochs,
        initial=resumed_from,
        desc="train",
        unit="epoch",
        main_process=world()[0] == 0,
    )
    for epoch in range(start, cfg.epochs + 1):
        # Train one epoch, then measure loss and accuracy on the validation images
        train_loss, train_acc = _train_epoch(
            model,
            optimizer,
            train,
            scheduler=scheduler,
            cfg=cfg,
            generator=generator,
            epoch=epoch,
            frozen=frozen,
        )
        val_loss, val_acc = _evaluate(
            model, val_views, val.labels, batch=cfg.batch_size, precision=cfg.precision
        )
        row = dict(
            zip(HISTORY_KEYS, (epoch, train_loss, train_acc, val_loss, val_acc), strict=True)
        )
        history.append(row)
        # Keep the weights of the best validation accuracy (the test split never decides)
        if val_acc > best_acc:
            best_epoch, best_acc = epoch, val_acc
            best_state = copy.deepcopy(_trained(model, frozen).state_dict())
        # Checkpoint atomically after every epoch, so a killed run resumes exactly here
        if ckpt_path and writer:
            save_checkpoint(
                ckpt_path,
                {
                    "meta": _meta(model, classes, frozen),
                    "model": _trained(model, frozen).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all()
                    if device_of(model).type == "cuda"
                    else None,
                    "epoch": epoch,
                    "history": history,
                    "best_epoch": best_epoch,
                    "best_acc": best_acc,
                    # the current weights when this epoch is the best: not written twice
                    "best_state": None if best_epoch == epoch else best_state,
                },
            )
        # Report the epoch (MLflow: step = epoch)
        if on_epoch:
            on_epoch(row)
        epochs.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}", refresh=False)
        epochs.update()
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs:
            epochs.close()
            return FitResult(history, best_epoch, best_state, False, resumed_from)
    epochs.close()
    return FitResult(history, best_epoch, best_state, True, resumed_from)
