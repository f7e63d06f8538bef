"""Typed, validated pipeline configuration read from ``params.yaml``.

Every stage receives one frozen :class:`Params` object instead of a dict, so a
typo in ``params.yaml`` is caught once, at start-up, with the key named
("params.yaml: dct.method2_sigma: Input should be a valid number") rather than
silently replaced by a default deep inside a stage.

Each stage owns one section. Defaults mirror the committed ``params.yaml``
(the quick, offline, CPU profile); ``profiles/paper.yaml`` overrides them for
the paper-scale run (see :mod:`lymphaug.profile`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lymphaug.common.errors import ConfigError

DEFAULT_CLASSES = ["CLL", "FL", "MCL"]
# The study's three training conditions: the training split alone, + DCT images, + synthetic.
CONDITIONS = ("base", "dct", "synthetic")
DEFAULT_PROMPTS = {
    "CLL": "microscopic image of chronic lymphocytic leukemia",
    "FL": "microscopic image of follicular lymphoma",
    "MCL": "microscopic image of mantle cell lymphoma",
}

DctMethod = Literal["method1", "method2"]


class Section(BaseModel):
    """Base for every section: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- ingest -----------------------------------------------------------------


class SampleSource(Section):
    """The generated H&E-like data set used by the quick profile and the tests."""

    per_class: int = Field(30, ge=2)
    width: int = Field(417, ge=32)
    height: int = Field(312, ge=32)
    seed: int = 0


class ArchiveSource(Section):
    """A .tar.gz / .zip from a path or an http(s):// or file:// URL, checked by sha256.

    The limits keep a hostile or broken archive (a zip bomb) from filling the disk; the
    defaults are several times the largest real data set (IICBU unpacks to about 1.3 GB)
    and ten times what images compress to (zip bombs reach 1000:1).
    """

    url: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="required")
    max_unpacked_bytes: int = Field(8 * 2**30, ge=1, description="all members together")
    max_ratio: float = Field(100.0, ge=1, description="unpacked:compressed, per zip member")


class MatSource(Section):
    """The IICBU benchmark's MATLAB file (images, labels and predefined folds)."""

    path: str | None = None
    images_key: str = "DATA"
    fold: int = Field(1, ge=1)


class IngestConfig(Section):
    source: Literal["sample", "folder", "archive", "mat"] = "sample"
    folder: str | None = None
    archive: ArchiveSource = ArchiveSource()
    mat: MatSource = MatSource()
    sample: SampleSource = SampleSource()
    resize: list[int] | None = Field(None, description="[width, height] or null")
    on_unreadable: Literal["fail", "skip"] = "fail"

    @model_validator(mode="after")
    def _resize_pair(self) -> IngestConfig:
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 8):
            raise ValueError(f"resize must be [width, height] (each >= 8), got {self.resize}")
        return self


# --- split ------------------------------------------------------------------


class SplitConfig(Section):
    seed: int = Field(0, ge=0)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="k_folds 0 only")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="of what the test split leaves")
    k_folds: int = Field(
        0, ge=0, description="0: one split (fold 0); k>=2: k folds over all images, fold f = test"
    )
    folds: list[int] = Field(
        [0], min_length=1, description="the folds DVC's matrix stages run (a list: DVC reads it)"
    )
    predefined: bool = Field(
        False, description="source=mat: the benchmark's held-out fold(s) are the test split(s)"
    )

    @property
    def n_folds(self) -> int:
        """How many fold assignments split writes: k_folds, or the one split as fold 0."""
        return max(self.k_folds, 1)

    @field_validator("k_folds")
    @classmethod
    def _not_one_fold(cls, k_folds: int) -> int:
        if k_folds == 1:
            raise ValueError("k_folds must be 0 (one split) or at least 2")
        return k_folds

    @field_validator("folds")
    @classmethod
    def _folds_in_range(cls, folds: list[int], info: ValidationInfo) -> list[int]:
        """Each fold a DVC matrix runs must exist; a repeat would name one stage twice."""
        k_folds = info.data.get("k_folds")
        if k_folds is None:  # k_folds itself is invalid: its own error says so
            return folds
        n_folds = max(k_folds, 1)
        bad = [f for f in folds if not 0 <= f < n_folds]
        if bad:
            raise ValueError(
                f"folds {bad} out of range: with k_folds {k_folds} the folds are 0..{n_folds - 1}"
            )
        if len(set(folds)) != len(folds):
            raise ValueError(f"folds must not repeat: {folds}")
        return folds


# --- DCT augmentation -------------------------------------------------------


class DctConfig(Section):
    seed: int = Field(0, ge=0)
    methods: list[DctMethod] = ["method1", "method2"]
    copies_per_image: int = Field(1, ge=1)
    method1_std_multiplier: float = Field(2.0, gt=0)
    method2_sigma: float = Field(20.0, ge=0)
    contact_sheet_per_class: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _methods_unique(self) -> DctConfig:
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be non-empty, without repeats: {self.methods}")
        return self


# --- diffusion --------------------------------------------------------------


SCRATCH = "scratch"  # finetune.base_model: train the whole generator here (autoencoder + UNet)


class FinetuneConfig(Section):
    base_model: str = Field("tiny", description="scratch | tiny | hub id | local diffusers folder")
    revision: str | None = Field(
        None, description="hub id only: the branch, tag or commit to load (pin a commit hash)"
    )
    method: Literal["full", "lora"] = "full"
    lora_rank: int = Field(4, ge=1)
    prompts: dict[str, str] = DEFAULT_PROMPTS
    resolution: int = Field(32, ge=8)
    random_crop: bool = True
    random_flip: bool = True
    learning_rate: float = Field(1e-3, gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(150, ge=1)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml11_no(cls, value: object) -> object:
        """YAML 1.1 reads an unquoted ``no`` as false; accelerate's spelling is "no"."""
        return "no" if value is False else value

    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    use_ema: bool = False
    snr_gamma: float | None = Field(None, gt=0, description="Min-SNR weighting; 5.0 typical")
    prompt_dropout: float = Field(0.1, ge=0, lt=1, description="P(empty prompt): enables CFG")
    checkpoint_every: int = Field(50, ge=1)
    checkpoints_total_limit: int = Field(2, ge=1)
    validation_every: int = Field(75, ge=1)
    validation_steps: int = Field(20, ge=1, description="sampling steps of the validation grid")
    seed: int = 0
    num_threads: int = Field(0, ge=0, description="CPU threads; 0: 1 for tiny/scratch, else all")
    max_cpu_hours: float = Field(
        6.0, gt=0, description="on a CPU, stop when the first step's estimate is longer"
    )
    unet_width: int | None = Field(
        None, ge=8, multiple_of=8, description="scratch only: channels of the UNet's first block"
    )


class AutoencoderConfig(Section):
    """The from-scratch generator's first stage (``finetune.base_model: scratch`` only): an
    AutoencoderKL trained by ``lymphaug autoencoder`` on random square crops of the rescaled
    training images. ``scale`` is also the UNet's and generate's pixel scale."""

    scale: float = Field(0.5, gt=0, le=4, description="rescale training images first")
    resolution: int = Field(64, ge=16, multiple_of=8, description="random square crops, px")
    width: int = Field(32, ge=8, multiple_of=8, description="channels of the first block")
    downsample: Literal[2, 4, 8] = Field(4, description="pixels per latent, each side")
    latent_channels: int = Field(4, ge=1)
    pixel_loss: Literal["l1", "mse"] = "l1"
    kl_weight: float = Field(1e-6, ge=0, description="KL term (Stable Diffusion: 1e-6)")
    learning_rate: float = Field(1e-3, gt=0)
    max_steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    checkpoints_total_limit: int = Field(2, ge=1)
    seed: int = 0


class GenerateConfig(Section):
    mode: Literal["txt2img", "img2img"] = "txt2img"
    per_class: int = Field(10, ge=1)
    scheduler: Literal["dpmsolver++", "ddpm", "pndm", "euler"] = "dpmsolver++"
    steps: int = Field(10, ge=1)
    guidance_scale: float = Field(4.0, ge=0)
    strength: float = Field(0.5, gt=0, le=1)
    batch_size: int = Field(10, ge=1)
    seed: int = 0
    contact_sheet_per_class: int = Field(4, ge=1)


# --- classifier -------------------------------------------------------------


class TrainConfig(Section):
    """The classifier. Two input pipelines: the study's (``patch_size: null``: the whole
    image crop-and-resized to ``input_size``) and histology patches (``patch_size``: random
    squares of the ``scale``-d image at full resolution, evaluated as ``eval`` says)."""

    arch: str = Field("alexnet", description="torchvision model name or lymphaug_cnn")
    width: int = Field(16, ge=4, description="lymphaug_cnn: channels of its first stage")
    small_stem: bool = Field(False, description="ResNets: 3x3 stride-1 stem, no max-pool")
    weights: str = Field("none", description="imagenet | none | path to a state dict")
    freeze_backbone: bool = False
    input_size: int = Field(96, ge=32, description="the study's pipeline: crop size in px")
    scale: float = Field(1.0, gt=0, le=4, description="rescale decoded images first")
    patch_size: int | None = Field(None, ge=8, description="random square patches, in px")
    patches_per_image: int = Field(1, ge=1, description="patches per image per epoch")
    eval: Literal["crop", "whole", "grid"] = Field(
        "crop", description="crop: resize + centre crop (study); whole image; grid of patches"
    )
    dihedral: bool = Field(False, description="random 90-degree rotations and flips")
    eval_symmetries: bool = Field(
        False, description="test predictions: mean over the 8 rotations/flips of each view"
    )
    hed_jitter: float = Field(0.0, ge=0, lt=1, description="stain jitter sigma (HED space)")
    brightness: float = Field(0.0, ge=0, lt=1, description="factor U(1-x, 1+x)")
    contrast: float = Field(0.0, ge=0, lt=1, description="factor U(1-x, 1+x)")
    saturation: float = Field(0.0, ge=0, lt=1, description="factor U(1-x, 1+x)")
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(5, ge=1)
    budget: Literal["epochs", "real_epochs"] = Field(
        "epochs",
        description="epochs: each epoch passes over every training image, augmented ones "
        "included (the study: more images, more steps); real_epochs: each epoch has the real "
        "images' number of samples in every condition (equal optimiser steps)",
    )
    augmented_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="budget real_epochs: probability that a sample is an augmented image "
        "(DCT or synthetic) instead of a real one (DA-Fusion: 0.5)",
    )
    optimizer: Literal["adam", "adamw"] = Field(
        "adam", description="adamw: decoupled weight decay, none on norms and biases"
    )
    learning_rate: float = Field(1e-4, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_fraction: float = Field(0.0, ge=0, lt=1, description="linear warm-up, of all steps")
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seeds: list[int] = Field([0, 1], min_length=1, description="one train stage per seed")
    dct_methods: list[DctMethod] = ["method1", "method2"]
    synthetic_dir: str | None = Field(
        None, description="null: the fold's data/synthetic/fold_<f>; else a path with {fold}"
    )
    vflip: bool = Field(True, description="vertical flips too (histology has no 'up')")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: CPU autocast (AMX)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:[0-9]+)$")
    num_threads: int = Field(0, ge=0, description="0: torch's default")

    @field_validator("synthetic_dir")
    @classmethod
    def _synthetic_dir_per_fold(cls, value: str | None) -> str | None:
        """A synthetic set is learned from one fold's training images: an override must name
        the fold, or every fold's classifier would train on one fold's set (a leak)."""
        if value is not None and "{fold}" not in value:
            raise ValueError(
                f"synthetic_dir {value!r} must contain {{fold}} (e.g. 'elsewhere/fold_{{fold}}'): "
                "each fold trains on its own synthetic set; null uses data/synthetic/fold_<f>"
            )
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, seeds: list[int]) -> list[int]:
        """DVC's matrix needs distinct seeds: a repeat would be one stage named twice."""
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must not repeat: {seeds}")
        return seeds

    @model_validator(mode="after")
    def _pipeline_consistent(self) -> TrainConfig:
        if self.eval == "grid" and self.patch_size is None:
            raise ValueError("train.eval: 'grid' averages over patches: set train.patch_size")
        if self.patch_size is None and (self.patches_per_image != 1 or self.dihedral):
            raise ValueError(
                "train.patches_per_image and train.dihedral belong to the patch pipeline: "
                "set train.patch_size"
            )
        return self


# --- comparison report ------------------------------------------------------


class CompareConfig(Section):
    alpha: float = Field(0.05, gt=0, lt=1)
    bootstrap_resamples: int = Field(2000, ge=100)
    seed: int = 0
    feature_extractor: Literal["auto", "inception", "alexnet", "classifier"] = "auto"
    near_copy_threshold: float = Field(0.05, ge=0)


# --- tracking ---------------------------------------------------------------


class MlflowConfig(Section):
    tracking_uri: str | None = Field(
        None, description="MLFLOW_TRACKING_URI wins; null: sqlite:///mlflow.db in the repo"
    )
    experiment: str = "lymphaug"


class Params(Section):
    """The whole pipeline configuration (one ``params.yaml``)."""

    classes: list[str] = DEFAULT_CLASSES
    ingest: IngestConfig = IngestConfig()
    split: SplitConfig = SplitConfig()
    dct: DctConfig = DctConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    autoencoder: AutoencoderConfig | None = None
    generate: GenerateConfig = GenerateConfig()
    train: TrainConfig = TrainConfig()
    compare: CompareConfig = CompareConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @model_validator(mode="after")
    def _classes_consistent(self) -> Params:
        if len(self.classes) < 2:
            raise ValueError("at least two classes are needed")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes contains duplicates: {self.classes}")
        missing = [c for c in self.classes if c not in self.finetune.prompts]
        if missing:
            raise ValueError(f"finetune.prompts has no prompt for class(es) {missing}")
        return self

    @model_validator(mode="after")
    def _scratch_consistent(self) -> Params:
        """From-scratch options belong to the scratch base only: a pretrained (or the random
        ``tiny``) base given them would otherwise ignore them, or retrain its VAE silently."""
        ft = self.finetune
        if ft.base_model != SCRATCH:
            given = [
                k
                for k, v in (
                    ("autoencoder", self.autoencoder),
                    ("finetune.unet_width", ft.unet_width),
                )
                if v is not None
            ]
            if given:
                raise ValueError(
                    f"{' and '.join(given)} train a generator from scratch, but "
                    f"finetune.base_model is {ft.base_model!r}, which brings its own weights "
                    f"(its VAE is not retrained): set them to null, or base_model: {SCRATCH}"
                )
            return self
        if self.autoencoder is None or ft.unet_width is None:
            raise ValueError(
                f"finetune.base_model: {SCRATCH} needs an autoencoder section and "
                "finetune.unet_width (see profiles/quick.yaml)"
            )
        if ft.method != "full":
            raise ValueError(
                f"finetune.method: {ft.method!r} adapts a pretrained UNet; a {SCRATCH} UNet is "
                "trained in full (method: full)"
            )
        if ft.resolution % (self.autoencoder.downsample * 4):
            raise ValueError(
                f"finetune.resolution {ft.resolution} must be a multiple of "
                f"{self.autoencoder.downsample * 4} (autoencoder.downsample x the UNet's 4)"
            )
        return self


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def parse_params(data: object, source: str = "params") -> Params:
    """Validate a plain mapping into :class:`Params`, raising :class:`ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key} (line {line}; first set on line {first})")


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error.

    PyYAML keeps the last value silently; DVC refuses the same file, so the stage
    and ``dvc params diff`` would disagree about which value ran.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self._check_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _check_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges; an explicit key then overrides, as YAML says
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                where = self._dotted(node, key)
                raise _DuplicateKey(where, line, seen[key])
            seen[key] = line

    def _dotted(self, node: yaml.MappingNode, key: object) -> str:
        """The key's dotted path (``train.seeds``), found from the document's root."""
        return ".".join([*(_path_to(self._root, node) or []), str(key)])

    def construct_document(self, node):
        self._root = node
        return super().construct_document(node)


def _path_to(root, target, prefix=()) -> list[str] | None:
    """The keys leading from node ``root`` to node ``target`` (None if it is not below)."""
    if root is target:
        return list(prefix)
    if isinstance(root, yaml.MappingNode):
        for key_node, value in root.value:
            found = _path_to(value, target, (*prefix, str(key_node.value)))
            if found is not None:
                return found
    elif isinstance(root, yaml.SequenceNode):
        for i, value in enumerate(root.value):
            found = _path_to(value, target, (*prefix, str(i)))
            if found is not None:
                return found
    return None


def read_yaml(text: str, source: str) -> object:
    """Parse YAML as params files are read everywhere (safe; duplicate keys are errors)."""
    try:
        return yaml.load(text, Loader=StrictLoader)
    except _DuplicateKey as err:
        raise ConfigError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; every problem names the file and the key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (run from the repository root)") from None
    return parse_params(read_yaml(text, str(path)), str(path))
