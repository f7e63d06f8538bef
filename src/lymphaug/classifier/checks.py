"""Start-up checks of the classifier's input pipeline, before any image is decoded.

A patch larger than the rescaled images, or a scale that shrinks them below what the
network can take, would otherwise fail minutes later inside torch with a shape error;
here it is one message naming the keys, from the image sizes the raw manifest records.
"""

from __future__ import annotations

import pandas as pd
import torch

from lymphaug.classifier.model import build_classifier
from lymphaug.common.config import TrainConfig
from lymphaug.common.errors import ConfigError


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) after ``train.scale``, rounded as the decoder rounds."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_input_pipeline(cfg: TrainConfig, raw_manifest: pd.DataFrame, n_classes: int) -> None:
    """Refuse a configuration whose patches or images cannot fit the network.

    Raises :class:`ConfigError` naming ``train.patch_size`` / ``train.scale`` /
    ``train.input_size``; runs one forward pass of a freshly built (untrained) model at
    the training and evaluation input sizes, which costs well under a second.
    """
    sizes = [
        scaled_size(int(w), int(h), cfg.scale)
        for w, h in zip(raw_manifest["width"], raw_manifest["height"], strict=True)
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
    train_side = cfg.patch_size or cfg.input_size
    views = {"training": (train_side, train_side)}
    if cfg.eval == "crop":
        views["evaluation"] = (cfg.input_size, cfg.input_size)
    elif cfg.eval == "whole":
        views["evaluation"] = (min_h, min_w)
    with torch.random.fork_rng():  # the probe's random weights leave the global RNG as it was
        model = build_classifier(
            cfg.arch, n_classes, "none", width=cfg.width, small_stem=cfg.small_stem
        ).eval()
        for purpose, (h, w) in views.items():
            try:
                with torch.no_grad():
                    model(torch.zeros(1, 3, h, w))
            except RuntimeError as err:
                reason = str(err).splitlines()[0][:200]
                raise ConfigError(
                    f"train.arch={cfg.arch} cannot take {w} x {h} px {purpose} input "
                    f"(train.scale={cfg.scale:g}, train.patch_size={cfg.patch_size}, "
                    f"train.input_size={cfg.input_size}, train.eval={cfg.eval}): {reason}"
                ) from None
