"""Start-up checks of the classifier's input pipeline, before any image is decoded.

A patch larger than the rescaled images, or a scale that shrinks them below what the
network can take, would otherwise fail minutes later inside torch with a shape error;
here it is one message naming the keys, from the image sizes the raw manifest records.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import init_empty_weights

from lymphaug.classifier.model import PROJECT_CNN, build_classifier, check_architecture
from lymphaug.common.config import TrainConfig
from lymphaug.common.errors import ConfigError
from lymphaug.common.manifest import RAW_COLUMNS, read_table


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) after ``train.scale``, rounded as the decoder rounds."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_input_pipeline(cfg: TrainConfig, raw_manifest: Path, n_classes: int) -> None:
    """Refuse a configuration whose patches or images cannot fit the network.

    Raises :class:`ConfigError` naming ``train.patch_size`` / ``train.scale`` /
    ``train.input_size``; a torchvision model must train at the training input size
    (:func:`~lymphaug.classifier.model.check_architecture`, which needs no data, so it
    comes first), and the network, built on the meta device (no memory, no weights), must
    take the training and evaluation inputs at the sizes ``raw_manifest`` records.
    """
    train_side = cfg.patch_size or cfg.input_size
    if cfg.arch != PROJECT_CNN:  # a torchvision model: one training step on the meta device
        check_architecture(cfg.arch, input_size=train_side, weights=cfg.weights)
    rows = read_table(raw_manifest, RAW_COLUMNS)
    sizes = [
        scaled_size(int(w), int(h), cfg.scale)
        for w, h in zip(rows["width"], rows["height"], strict=True)
    ]
    if not sizes:
        return
    min_w, min_h = min(w for w, _ in sizes), min(h for _, h in sizes)
    if cfg.patch_size is not None and cfg.patch_size > min(min_w, min_h):
        raise ConfigError(
            f"train.patch_size={cfg.patch_size} px does not fit the images: after "
            f"train.scale={cfg.scale:g} the smallest is {min_w} x {min_h} px; lower "
            "train.patch_size or raise train.scale"
        )
    views = {"training": (train_side, train_side)}
    if cfg.eval == "crop":
        views["evaluation"] = (cfg.input_size, cfg.input_size)
    elif cfg.eval == "whole":
        views["evaluation"] = (min_h, min_w)
    # the real model without memory or weights: any size costs nothing, even for big models
    with init_empty_weights(include_buffers=False):
        model = build_classifier(
            cfg.arch,
            n_classes,
            "none",
            input_size=train_side,
            width=cfg.width,
            small_stem=cfg.small_stem,
        )
    model = model.to("meta").eval()
    for purpose, (h, w) in views.items():
        try:
            with torch.no_grad():
                model(torch.empty(1, 3, h, w, device="meta"))
        except (RuntimeError, ValueError, AssertionError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ConfigError(
                f"train.arch={cfg.arch} cannot take {w} x {h} px {purpose} input "
                f"(train.scale={cfg.scale:g}, train.patch_size={cfg.patch_size}, "
                f"train.input_size={cfg.input_size}, train.eval={cfg.eval}): {reason}"
            ) from None
