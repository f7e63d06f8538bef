"""A torchvision classifier with its last linear layer replaced for the study's classes.

The network is held as ``body`` (the torchvision model whose last ``nn.Linear`` is
an ``nn.Identity``) and ``head`` (the new linear layer). Splitting it this way lets
the training loop run a frozen body without autograd and only the head with
gradients, which is what makes the frozen-backbone condition of the study cheap.
``torchvision_state_dict`` maps the pair back to torchvision's own key layout, so a
trained model can be reloaded with plain torchvision (or fed back as ``train.weights``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lymphaug.common.errors import LymphaugError


class WeightsError(LymphaugError):
    """Pretrained weights cannot be obtained or do not fit the architecture."""


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Linear, arch: str, head_name: str) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.arch = arch
        self.head_name = head_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def freeze_body(self) -> None:
        for p in self.body.parameters():
            p.requires_grad_(False)

    def torchvision_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in torchvision's key layout (``classifier.6.weight`` for AlexNet)."""
        state = {k: v.detach().clone() for k, v in self.body.state_dict().items()}
        for k, v in self.head.state_dict().items():
            state[f"{self.head_name}.{k}"] = v.detach().clone()
        return state


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise WeightsError(f"{type(model).__name__} has no linear layer to replace")
    return names[-1]


def _set_module(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, leaf = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


PROJECT_CNN = "lymphaug_cnn"


class SmallCNN(nn.Module):
    """A small batch-norm CNN for histology patches trained from scratch.

    Four stages of two 3x3 conv-BN-ReLU layers (``width``, 2x, 4x, 8x channels), each
    halving the resolution with a max-pool, then global average pooling: about 0.3 M
    parameters at ``width`` 16, 1.2 M at 32. Global pooling makes it fully convolutional,
    so a model trained on 64 px patches classifies a whole 208 x 156 image in one pass.
    The body ends in the pooled features; ``fc`` is the linear layer the wrapper replaces.
    """

    def __init__(self, width: int = 16, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for stage in range(4):
            out = width * 2**stage
            for _ in range(2):
                layers += [
                    nn.Conv2d(channels, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)))


def _small_stem(net: nn.Module) -> None:
    """A ResNet's 7x7 stride-2 stem and max-pool -> one 3x3 stride-1 conv (CIFAR-style),
    so small patches are not downsampled fourfold before the first residual block."""
    if not (isinstance(getattr(net, "conv1", None), nn.Conv2d) and hasattr(net, "maxpool")):
        raise WeightsError(
            f"train.small_stem: only ResNet-style models (conv1 + maxpool) have the stem "
            f"to replace, not {type(net).__name__}"
        )
    net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()


def _torchvision_model(arch: str) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise WeightsError(
            f"train.arch: unknown torchvision classification model {arch!r} "
            f"(e.g. {PROJECT_CNN}, alexnet, resnet18, resnet50, densenet121, efficientnet_b0)"
        )
    return torchvision.models.get_model(arch, weights=None)


def imagenet_weights(arch: str):
    """torchvision's default ImageNet weights enum member for ``arch``."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise WeightsError(f"torchvision has no ImageNet weights for {arch!r}") from None


def _download_imagenet(arch: str) -> dict[str, torch.Tensor]:
    weights = imagenet_weights(arch)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # URLError, timeouts, hash mismatch: all need the same advice
        raise WeightsError(
            f"could not download the ImageNet weights for {arch} from {weights.url} ({err}). "
            "Without internet: download that file elsewhere and set train.weights to its path "
            "(or put it in $TORCH_HOME/hub/checkpoints)"
        ) from None


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict safely (``weights_only``); anything else is a clear error."""
    if not path.is_file():
        raise WeightsError(f"train.weights: {path} not found (expected imagenet, none or a file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(
            f"{path}: not a PyTorch state dict ({type(err).__name__}: {err})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return obj


def _load_into(model: nn.Module, state: dict, source: str, arch: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0:3]
        raise WeightsError(
            f"{source}: the weights do not fit {arch} ({' '.join(first)[:300]}...); "
            "is it a state dict of another architecture?"
        ) from None


def build_classifier(
    arch: str,
    num_classes: int,
    weights: str,
    root: Path = Path("."),
    *,
    width: int = 16,
    small_stem: bool = False,
) -> Classifier:
    """Build ``arch`` with ``weights`` (imagenet | none | path) and a fresh ``num_classes`` head.

    ``arch`` is a torchvision classification model or ``lymphaug_cnn`` (:class:`SmallCNN`,
    ``width`` channels in its first stage); ``small_stem`` gives a ResNet a stride-1
    stem. A weights file may hold the original 1000-class head (a torchvision download)
    or an already replaced ``num_classes`` head (a model this stage wrote).
    """
    if arch == PROJECT_CNN:
        if weights == "imagenet":
            raise WeightsError(f"train.weights: {PROJECT_CNN} has no ImageNet weights")
        net: nn.Module = SmallCNN(width=width)
    else:
        net = _torchvision_model(arch)
        if small_stem:
            if weights == "imagenet":
                raise WeightsError("train.small_stem: ImageNet weights need the original stem")
            _small_stem(net)
    head_name = _last_linear(net)
    old_head = net.get_submodule(head_name)
    in_features = old_head.in_features
    if weights == "imagenet":
        _load_into(net, _download_imagenet(arch), "ImageNet weights", arch)
    elif weights != "none":
        path = Path(weights)
        path = path if path.is_absolute() else root / path
        state = load_state_dict_file(path)
        head_w = state.get(f"{head_name}.weight")
        if head_w is not None and head_w.shape[0] == num_classes != old_head.out_features:
            _set_module(net, head_name, nn.Linear(in_features, num_classes))
            _load_into(net, state, str(path), arch)
            head = net.get_submodule(head_name)
            _set_module(net, head_name, nn.Identity())
            return Classifier(net, head, arch, head_name)
        _load_into(net, state, str(path), arch)
    _set_module(net, head_name, nn.Identity())
    # The new head is initialised from torch's global RNG: callers seed it first.
    return Classifier(net, nn.Linear(in_features, num_classes), arch, head_name)


def device_of(model: torch.nn.Module) -> torch.device:
    """The device the model lives on; batches are decoded on the CPU and moved there."""
    return next(model.parameters()).device


def autocast(precision: str, device: torch.device | None = None):
    """bf16 autocast (convolutions and matmuls; fast on GPUs and on CPUs with AMX), or nothing."""
    kind = device.type if device is not None else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16")
