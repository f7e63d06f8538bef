"""The fixed feature extractor behind FID, KID, the memorisation check and TSTR.

Preference (``compare.feature_extractor: auto``): ImageNet Inception-v3 (the FID
convention), then ImageNet AlexNet, each only when its weights file is already in
torchvision's cache ($TORCH_HOME/hub/checkpoints; the compare stage never
downloads), else the ``base`` classifier of the first seed, cut before its last
linear layer. The model is built by the classifier package's ``build_classifier``
so the two stages cannot disagree about the architecture. Numbers from different
extractors are not comparable; the report names the one used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lymphaug.common.config import TrainConfig
from lymphaug.common.errors import DataError
from lymphaug.common.paths import Layout

IMAGENET = {  # extractor -> (torchvision arch, input size)
    "inception": ("inception_v3", 299),
    "alexnet": ("alexnet", 227),
}
MODEL_FILES = ("model.pt", "model.pth", "state_dict.pt", "weights.pt")


@dataclass(kw_only=True)
class Extractor:
    """A frozen image model and how it was chosen: the report names it because FID/KID
    from different extractors are not comparable."""

    name: str  # inception | alexnet | classifier
    description: str  # for the report
    model: object  # lymphaug.classifier.model.Classifier
    input_size: int
    # the classifier's own input pipeline (scale, crop/whole/grid views); None: ImageNet's
    train_cfg: TrainConfig | None = None
    seed: int | None = None  # the `base` run it is (its test accuracy is stated beside it)

    def features(self, files: list[Path], batch: int = 32) -> np.ndarray:
        """Penultimate-layer features of each image, averaged over its evaluation views.

        An ImageNet model sees a resize + centre crop at its input size; the ``base``
        classifier sees each image as it was evaluated in training (rescaled, then the
        centre crop, the whole image or the patch grid of ``train.eval``).
        """
        from lymphaug.classifier.data import decode
        from lymphaug.classifier.evaluate import eval_views, mean_over_views
        from lymphaug.classifier.transforms import eval_tensor

        scale = self.train_cfg.scale if self.train_cfg is not None else 1.0
        images = decode(files, desc=f"features ({self.name})", scale=scale)
        if not images:
            return np.zeros((0, 0))
        if self.train_cfg is not None:
            views = eval_views(images, self.train_cfg)
        else:
            views = list(eval_tensor(images, self.input_size).unsqueeze(1))
        self.model.eval()
        body = self.model.body
        return mean_over_views(lambda x: body(x).flatten(1), views, batch=batch).numpy()


def cached_imagenet_file(name: str) -> Path | None:
    """The weights file torchvision would download for ``name``, if already cached."""
    import torch
    import torchvision

    arch = IMAGENET[name][0]
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return path if path.is_file() else None


def classifier_weights(layout: Layout, seed: int) -> Path:
    """The trained ``base`` model of ``seed`` (a state dict the classifier can rebuild)."""
    folder = layout.classifier("base", seed)
    for name in MODEL_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    if not found:
        raise DataError(
            f"no base classifier weights in {folder} (expected one of {list(MODEL_FILES)}); "
            "run `dvc repro` or set compare.feature_extractor"
        )
    return found[0]


def choose(
    requested: str, layout: Layout, *, train_cfg: TrainConfig, n_classes: int, seed: int
) -> Extractor:
    """Build the extractor ``requested`` (auto | inception | alexnet | classifier)."""
    import torch

    from lymphaug.classifier.model import build_classifier

    torch.manual_seed(0)  # the unused head is drawn from the global RNG
    order = ["inception", "alexnet", "classifier"] if requested == "auto" else [requested]
    for name in order:
        if name == "classifier":
            path = classifier_weights(layout, seed)
            arch = train_cfg.arch
            model = build_classifier(
                arch,
                n_classes,
                weights=str(path),
                root=layout.root,
                input_size=train_cfg.patch_size or train_cfg.input_size,
                width=train_cfg.width,
                small_stem=train_cfg.small_stem,
            )
            desc = (
                f"the `base` classifier of seed {seed} ({arch}, penultimate layer, "
                f"{path.relative_to(layout.root) if path.is_relative_to(layout.root) else path}); "
                "no ImageNet Inception or AlexNet weights were in the torchvision cache"
                if requested == "auto"
                else f"the `base` classifier of seed {seed} ({arch}, penultimate layer)"
            )
            return Extractor(
                name="classifier",
                description=desc,
                model=model,
                input_size=train_cfg.input_size,
                train_cfg=train_cfg,
                seed=seed,
            )
        cached = cached_imagenet_file(name)
        if cached is None:
            if requested != "auto":
                raise DataError(
                    f"compare.feature_extractor={name}: its ImageNet weights are not in the "
                    f"torchvision cache ({Path(torch.hub.get_dir()) / 'checkpoints'}); the "
                    "compare stage does not download; use auto or classifier"
                )
            continue
        arch_name, size = IMAGENET[name]
        model = build_classifier(arch_name, n_classes, weights=str(cached), root=layout.root)
        if name == "inception":
            model.body.transform_input = True  # what torchvision sets for these weights
        return Extractor(
            name=name,
            description=f"ImageNet {arch_name} (penultimate layer, {size} px)",
            model=model,
            input_size=size,
        )
    raise AssertionError("unreachable")
