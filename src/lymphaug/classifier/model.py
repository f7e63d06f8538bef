"""A torchvision classifier with its last linear layer replaced for the study's classes.

The network is held as ``body`` (the torchvision model whose last ``nn.Linear`` is
an ``nn.Identity``) and ``head`` (the new linear layer). Splitting it this way lets
the training loop run a frozen body without autograd and only the head with
gradients, which is what makes the frozen-backbone condition of the study cheap.
``torchvision_state_dict`` maps the pair back to torchvision's own key layout, so a
trained model can be reloaded with plain torchvision (or fed back as ``train.weights``).

Any torchvision classification model whose last layer is linear works, at any input size it
can run at; :func:`check_architecture` decides that at start-up without building the real
network (one training step's shapes on the meta device) and refuses the rest with the
reason. GoogLeNet and Inception v3 train on their main logits (auxiliary heads off); ViT and
MaxViT without pretrained weights are built for ``train.input_size``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lymphaug.common.errors import LymphaugError, one_line


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
        raise WeightsError(
            f"train.arch: {type(model).__name__} has no linear last layer to replace (its "
            "classifier is a convolution); pick another architecture"
        )
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


AUX_HEADS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
SIZED_AT_CONSTRUCTION = ("vit_", "maxvit_")


def _builder_kwargs(arch: str, *, input_size: int, weights: str) -> dict:
    """Constructor arguments that make ``arch`` one classifier at ``input_size``.

    GoogLeNet and Inception v3 return (logits, auxiliary logits) in training: their main
    logits are what the study's head replaces, so the auxiliary heads are left out. A ViT's
    position embeddings and MaxViT's attention grid are sized at construction, for
    ``input_size`` (ImageNet weights then need their own size: see check_architecture).
    """
    kwargs: dict = {}
    if arch in AUX_HEADS:
        kwargs.update(aux_logits=False, init_weights=True)
        if weights == "imagenet":  # torchvision's weights expect their own input transform
            kwargs["transform_input"] = True
    if arch.startswith(SIZED_AT_CONSTRUCTION):
        key = "image_size" if arch.startswith("vit_") else "input_size"
        kwargs[key] = input_size if key == "image_size" else (input_size, input_size)
    return kwargs


def _torchvision_model(arch: str, *, input_size: int, weights: str) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise WeightsError(
            f"train.arch: unknown torchvision classification model {arch!r} "
            f"(e.g. {PROJECT_CNN}, alexnet, resnet18, resnet50, densenet121, efficientnet_b0)"
        )
    kwargs = _builder_kwargs(arch, input_size=input_size, weights=weights)
    try:
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    except (AssertionError, ValueError) as err:  # e.g. a ViT size not divisible by its patch
        raise WeightsError(
            _cannot_train(arch, err, input_size=input_size, weights=weights)
        ) from None


def _cannot_train(arch: str, err: BaseException, *, input_size: int, weights: str) -> str:
    """Why ``arch`` cannot train here, with torchvision's own minimum size as a hint."""
    import torchvision

    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    if arch.startswith("vit_"):
        hint = f"; a ViT needs a multiple of its patch size, {arch.rsplit('_', 1)[1]} px"
    elif arch.startswith("maxvit_"):
        hint = "; MaxViT needs a multiple of 224 px (7 x 7 windows at every stage)"
    else:
        try:
            low = torchvision.models.get_model_weights(arch).DEFAULT.meta.get("min_size")
        except (ValueError, KeyError, AttributeError):
            low = None
        hint = f"; torchvision gives {low[0]} px as its smallest input" if low else ""
    return (
        f"train.arch {arch} cannot train at train.input_size {input_size} with train.weights "
        f"{weights} ({reason}){hint}; pick another size or architecture"
    )


def check_architecture(arch: str, *, input_size: int, weights: str) -> None:
    """Refuse, at start-up and with the reason, an architecture that could not train here.

    Builds the network on the meta device (no memory, no weights, under a second even for
    vit_h_14 or regnet_y_128gf) and runs one training step's forward and backward pass at
    ``input_size``: a too-small input, a model with no linear last layer (squeezenet) or
    one that returns more than logits fails here, not inside torch minutes later.
    """
    from accelerate import init_empty_weights

    if weights == "imagenet" and arch.startswith(SIZED_AT_CONSTRUCTION):
        native = imagenet_weights(arch).meta["min_size"][0]
        if input_size != native:
            raise WeightsError(
                f"train.arch {arch}: its ImageNet weights are for {native} px inputs "
                f"(position embeddings of that size); set train.input_size: {native}, or "
                "train.weights: none"
            )
    with init_empty_weights(include_buffers=False):
        net = _torchvision_model(arch, input_size=input_size, weights=weights)
    head_name = _last_linear(net)
    head = net.get_submodule(head_name)
    _set_module(net, head_name, nn.Identity())
    model = Classifier(net, nn.Linear(head.in_features, 2), arch, head_name).to("meta")
    model.train()
    try:
        logits = model(torch.empty(2, 3, input_size, input_size, device="meta"))
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, 2):
            raise ValueError(f"the network returns {type(logits).__name__}, not logits")
        logits.sum().backward()
    except Exception as err:  # shape errors come as RuntimeError, ValueError, AssertionError
        raise WeightsError(
            _cannot_train(arch, err, input_size=input_size, weights=weights)
        ) from None


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
        raise WeightsError(f"{path}: not a PyTorch state dict ({one_line(err)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return obj


def _load_into(model: nn.Module, state: dict, source: str, arch: str) -> None:
    # weights saved with the auxiliary heads (torchvision's own) fit the network without them
    aux = AUX_HEADS.get(arch, ())
    state = {k: v for k, v in state.items() if not k.startswith(aux)} if aux else state
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
    input_size: int = 224,
    width: int = 16,
    small_stem: bool = False,
) -> Classifier:
    """Build ``arch`` with ``weights`` (imagenet | none | path) and a fresh ``num_classes`` head.

    ``arch`` is a torchvision classification model or ``lymphaug_cnn`` (:class:`SmallCNN`,
    ``width`` channels in its first stage); ``small_stem`` gives a ResNet a stride-1
    stem. A weights file may hold the original 1000-class head (a torchvision download)
    or an already replaced ``num_classes`` head (a model this stage wrote). ``input_size``
    only matters to the models sized at construction (ViT, MaxViT without weights).
    """
    if arch == PROJECT_CNN:
        if weights == "imagenet":
            raise WeightsError(f"train.weights: {PROJECT_CNN} has no ImageNet weights")
        net: nn.Module = SmallCNN(width=width)
    else:
        net = _torchvision_model(arch, input_size=input_size, weights=weights)
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
