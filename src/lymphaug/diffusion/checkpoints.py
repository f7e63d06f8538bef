"""Fine-tune checkpoints: trainable weights + optimizer/scheduler/scaler/EMA state, atomic.

``work/finetune/<hash>/checkpoints/checkpoint-<step>/`` holds ``state.pt`` and ``meta.json``
(method, step, LoRA rank). Only the trainable weights are stored (LoRA: the adapters), so a
Stable Diffusion LoRA checkpoint is megabytes, not gigabytes. Every random draw of a step is
a function of the step (see :mod:`.training`), so no RNG state is needed to resume exactly.

``state.pt`` is read with ``weights_only=True``: tensors and plain containers only, so a
crafted file in a work folder (or a folder given to ``--resume-from``) cannot run code. A
checkpoint that cannot be read (truncated, missing, not ours) is :class:`UnreadableCheckpoint`,
so the caller can fall back to an older one.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lymphaug.common.config import AutoencoderConfig, FinetuneConfig
from lymphaug.common.errors import LymphaugError, one_line
from lymphaug.common.files import atomic_path, remove

STATE_KEYS = {"trainable", "optimizer", "lr_scheduler", "losses", "lrs"}


class CheckpointError(LymphaugError):
    """A checkpoint cannot be resumed with the current settings."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint's files are missing, truncated or not a checkpoint of this project."""


def _checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first (a folder without ``meta.json`` is not one)."""
    found = [p for p in folder.glob("checkpoint-*") if (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def checkpoints_newest_first(work_dir: Path) -> list[Path]:
    return _checkpoints(work_dir / "checkpoints")[::-1]


AUTOENCODER = "autoencoder"  # the ``method`` of an autoencoder checkpoint


def _method(cfg: FinetuneConfig | AutoencoderConfig) -> str:
    return AUTOENCODER if isinstance(cfg, AutoencoderConfig) else cfg.method


def check_meta(path: Path, cfg: FinetuneConfig | AutoencoderConfig) -> dict:
    """Refuse, with a clear message, a checkpoint whose weights could not fit this model."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        int(meta["step"])
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise UnreadableCheckpoint(
            f"{path / 'meta.json'}: not a readable fine-tune checkpoint ({err})"
        ) from None
    if meta.get("method") != _method(cfg):
        wanted = (
            "the autoencoder" if _method(cfg) == AUTOENCODER else f"finetune.method={cfg.method!r}"
        )
        raise CheckpointError(
            f"{path}: checkpoint of method {meta.get('method')!r} cannot resume "
            f"{wanted}; use the same method, or rerun with --no-resume"
        )
    if _method(cfg) == "lora" and meta.get("lora_rank") != cfg.lora_rank:
        raise CheckpointError(
            f"{path}: checkpoint has LoRA rank {meta.get('lora_rank')}, "
            f"finetune.lora_rank is {cfg.lora_rank}"
        )
    return meta


@dataclass(frozen=True, kw_only=True)
class TrainingState:
    """What a checkpoint saves and restores: the trainable weights (LoRA: the adapters),
    the optimizer, the learning-rate schedule, the fp16 scaler and the EMA, if any."""

    trainable: dict[str, torch.nn.Parameter]
    optimizer: object
    lr_scheduler: object
    scaler: object | None
    ema: object | None


def load_checkpoint(
    path: Path, cfg: FinetuneConfig | AutoencoderConfig, state: TrainingState
) -> tuple[int, list[float], list[float]]:
    """Restore a checkpoint in place; returns (step, losses so far, learning rates so far).

    The curve so far comes back too, so a resumed run's curve is the uninterrupted one's.
    """
    meta = check_meta(path, cfg)
    saved = read_state(path / "state.pt")
    mismatch = set(state.trainable) ^ set(saved["trainable"])
    if mismatch:
        raise CheckpointError(f"{path}: weights do not match this model ({sorted(mismatch)[:3]})")
    try:
        with torch.no_grad():
            for name, param in state.trainable.items():
                param.copy_(saved["trainable"][name].to(param.dtype))
        state.optimizer.load_state_dict(saved["optimizer"])
        state.lr_scheduler.load_state_dict(saved["lr_scheduler"])
        if state.scaler is not None and saved.get("scaler"):
            state.scaler.load_state_dict(saved["scaler"])
        if state.ema is not None and saved.get("ema"):
            state.ema.load_state_dict(saved["ema"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        # an older checkpoint restores every one of these again, so falling back is safe
        raise UnreadableCheckpoint(
            f"{path / 'state.pt'}: does not fit this model ({err})"
        ) from None
    return int(meta["step"]), list(saved["losses"]), list(saved["lrs"])


def read_state(path: Path) -> dict:
    """``state.pt`` as tensors and plain containers only (``weights_only``): nothing runs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # missing, truncated, a pickle that would run code: all unusable
        raise UnreadableCheckpoint(f"{path}: unreadable checkpoint ({one_line(err)})") from None
    if not isinstance(state, dict) or not state.keys() >= STATE_KEYS:
        raise UnreadableCheckpoint(f"{path}: not a lymphaug fine-tune checkpoint")
    return state


def save_checkpoint(
    work_dir: Path,
    step: int,
    cfg: FinetuneConfig | AutoencoderConfig,
    state: TrainingState,
    *,
    losses: list[float],
    lrs: list[float],
) -> Path:
    """Write checkpoint-<step> atomically, then drop the oldest beyond the retention limit.

    Atomic, so an interruption mid-write never leaves a checkpoint that resume would pick.
    """
    folder = work_dir / "checkpoints"
    target = folder / f"checkpoint-{step:06d}"
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        saved = {
            "trainable": {name: p.detach().cpu().clone() for name, p in state.trainable.items()},
            "optimizer": state.optimizer.state_dict(),
            "lr_scheduler": state.lr_scheduler.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else None,
            "ema": state.ema.state_dict() if state.ema is not None else None,
            "losses": list(losses),
            "lrs": list(lrs),
        }
        with open(tmp / "state.pt", "wb") as f:  # a Python file: a full disk is an OSError
            torch.save(saved, f)
        meta = {
            "method": _method(cfg),
            "step": step,
            "lora_rank": getattr(cfg, "lora_rank", None),
            "base_model": getattr(cfg, "base_model", "scratch"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for old in _checkpoints(folder)[: -cfg.checkpoints_total_limit]:
        remove(old)
    return target


def resume_state(
    work_dir: Path,
    cfg: FinetuneConfig | AutoencoderConfig,
    state: TrainingState,
    *,
    resume: bool,
    resume_from: Path | None,
    stage: str,
) -> tuple[int, list[float], list[float]]:
    """Restore the newest intact checkpoint (or ``resume_from``); (0, [], []) if none.

    A truncated or missing newest checkpoint falls back to the one before, with a note.
    """
    if resume_from:
        candidates = [resume_from]
    else:
        candidates = checkpoints_newest_first(work_dir) if resume else []
    for k, checkpoint in enumerate(candidates):
        try:
            return load_checkpoint(checkpoint, cfg, state)
        except UnreadableCheckpoint as err:
            if resume_from:
                raise CheckpointError(
                    f"{err}; give --resume-from an intact checkpoint, or rerun with --no-resume"
                ) from None
            if k + 1 == len(candidates):
                raise CheckpointError(
                    f"{err}, and no earlier checkpoint is intact: rerun with --no-resume "
                    f"(or delete {work_dir}) to start over"
                ) from None
            print(
                f"{stage}: {err}; resuming from the previous checkpoint "
                f"{candidates[k + 1]} instead",
                file=sys.stderr,
            )
    return 0, [], []
