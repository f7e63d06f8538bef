"""What a report was run on, for its first lines: data, generator, classifier, profile.

Taken from params and from what the stages already wrote (``data/raw/manifest.csv``),
so that a report copied out of the repository still says whether it is a result on
lymphoma data, whether its synthetic images came from a pretrained model, and which
preset produced it. When params and the manifest disagree (data/raw built from another
source), the line says so instead of trusting either.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lymphaug.common import manifest
from lymphaug.common.config import GenerateConfig, Params, TrainConfig, read_yaml
from lymphaug.common.errors import LymphaugError
from lymphaug.common.paths import Layout

PROFILES_DIR = "profiles"  # the presets of `lymphaug profile`, relative to the repository
SAMPLE_SOURCE = "sample/"  # how ingest's manifest names a generated sample image
MAX_SHOWN_DIFFERENCES = 4


@dataclass(frozen=True, kw_only=True)
class RunFacts:
    """One sentence per thing the reader must know before reading any number."""

    data: str
    is_sample: bool  # the generated sample set: its images are not "real" lymphoma images
    generator: str
    classifier: str
    profile: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def data_line(params: Params, layout: Layout) -> tuple[str, bool]:
    """(sentence, is the generated sample set) for data/raw as ingest built it."""
    cfg = params.ingest
    try:
        raw = manifest.read_table(layout.raw / "manifest.csv", manifest.RAW_COLUMNS)
    except LymphaugError:
        raw = None
    counts = ""
    built_from_sample = None
    if raw is not None:
        per_class = ", ".join(f"{c} {int((raw['class'] == c).sum())}" for c in params.classes)
        counts = f"; {len(raw)} images: {per_class}"
        built_from_sample = bool(len(raw)) and all(
            str(s).startswith(SAMPLE_SOURCE) for s in raw["source"]
        )
    if cfg.source == "sample":
        s = cfg.sample
        line = (
            f"the **generated sample set, not lymphoma data** (`ingest.source: sample`, seed "
            f"{s.seed}, {s.per_class} per class, {s.width} x {s.height} px: synthetic "
            f"H&E-like pictures drawn by code{counts})"
        )
    elif cfg.source == "folder":
        line = f"the images of folder `{cfg.folder}` (`ingest.source: folder`{counts})"
    elif cfg.source == "archive":
        line = (
            f"the archive {cfg.archive.url} (sha256 `{cfg.archive.sha256}`, "
            f"`ingest.source: archive`{counts})"
        )
    else:
        path = _local(cfg.mat.path or "", layout.root)
        digest = (
            f"sha256 `{sha256_of(path)}`"
            if cfg.mat.path and path.is_file()
            else "sha256 not available: the file is not there now"
        )
        line = (
            f"the MATLAB file `{cfg.mat.path}` ({digest}, key {cfg.mat.images_key}, fold "
            f"{cfg.mat.fold}, `ingest.source: mat`{counts})"
        )
    if raw is None:
        line += "; data/raw has no manifest.csv, so what it holds was not checked"
    elif built_from_sample != (cfg.source == "sample"):
        line += (
            "; **but data/raw/manifest.csv was not built from this source** (run `dvc repro`"
            " to rebuild it): the numbers below are about whatever data/raw holds"
        )
    return line, (cfg.source == "sample") if built_from_sample is None else built_from_sample


def autoencoder_quality(layout: Layout) -> str:
    """The autoencoder's reconstruction error on unseen crops, as its stage measured it: the
    synthetic images cannot be sharper than what the autoencoder can reconstruct."""
    path = layout.autoencoder_metrics
    try:
        metrics = json.loads(path.read_text())
        val = metrics["val"]
        return (
            f"reconstruction of {val['images']} unseen validation crops: L1 {val['l1']:.1f}/255, "
            f"PSNR {val['psnr']:.1f} dB"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return f"its reconstruction error is not known ({path.name} missing or unreadable)"


def generator_line(params: Params, layout: Layout) -> str:
    """The diffusion base and whether its weights were pretrained."""
    cfg = params.finetune
    base = cfg.base_model
    training = f"{cfg.max_steps} steps at {cfg.resolution} px on the training split"
    if base == "tiny":
        return (
            "diffusion base `tiny`: **random weights** (VAE, text encoder and UNet built from "
            f"configs at random; only the UNet is trained, {training}); the random VAE decoder "
            "turns every latent into coloured noise, so **the synthetic images are noise by "
            "construction**"
        )
    if base == "scratch":
        ae = params.autoencoder
        autoencoder = (
            f"an AutoencoderKL (width {ae.width}, {ae.max_steps} steps on {ae.resolution} px "
            f"crops of the images x{ae.scale:g}; {autoencoder_quality(layout)})"
            if ae is not None
            else "an autoencoder"
        )
        return (
            "diffusion base `scratch`: no pretrained weights, **trained from scratch** on the "
            f"training split: {autoencoder}, then a UNet in its latent space ({training})"
        )
    where = (
        f"the local folder `{base}`"
        if _local(base, layout.root).exists()
        else f"the Hugging Face hub (`{base}`)"
    )
    return (
        f"diffusion base: **pretrained** weights from {where}, fine-tuned ({cfg.method}, "
        f"{training})"
    )


def generation_line(cfg: GenerateConfig) -> str:
    """How the images were sampled. img2img starts from a real training image, so its
    images owe their stain and layout partly to that image, not to the generator alone: a
    reader must know which mode the quality figures and the verdict rest on."""
    made = (
        f"{cfg.per_class} per class, guidance {cfg.guidance_scale:g}, "
        f"{cfg.steps} {cfg.scheduler} steps"
    )
    if cfg.mode == "img2img":
        return (
            f"sampled by **img2img** (SDEdit: a training image of the class, noised to strength "
            f"{cfg.strength:g} and denoised under its class prompt; its stain and layout carry "
            f"over into the synthetic image), {made}"
        )
    return f"sampled by txt2img from the class prompt alone, {made}"


def classifier_line(cfg: TrainConfig) -> str:
    if cfg.weights == "none":
        weights = "weights `none`: trained from scratch, no pretrained weights"
    elif cfg.weights == "imagenet":
        weights = "weights `imagenet`: torchvision's ImageNet weights"
    else:
        weights = f"weights from `{cfg.weights}`"
    trained = "only its last layer trained" if cfg.freeze_backbone else "all weights trained"
    return f"`{cfg.arch}` ({weights}; {trained})"


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def profile_line(params: Params, layout: Layout) -> str:
    """The preset of profiles/ whose every key params has, else the closest and how it differs."""
    folder = layout.root / PROFILES_DIR
    current = _flat(params.model_dump())
    candidates = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            preset = _flat(read_yaml(path.read_text(), str(path)) or {})
        except LymphaugError:
            continue
        differs = [
            f"{key}: {current.get(key)!r} (profile: {value!r})"
            for key, value in preset.items()
            if current.get(key) != value
        ]
        candidates.append((len(differs), path.stem, differs))
    if not candidates:
        return "not identifiable (no profiles/ folder)"
    matching = [name for n, name, _ in candidates if n == 0]
    if matching:
        return f"`{matching[0]}` (every key of {PROFILES_DIR}/{matching[0]}.yaml as set)"
    n, name, differs = min(candidates)
    shown = "; ".join(differs[:MAX_SHOWN_DIFFERENCES])
    shown += " ..." if n > MAX_SHOWN_DIFFERENCES else ""
    return f"no preset as such: `{name}` with {n} change(s): {shown}"


def describe(params: Params, layout: Layout) -> RunFacts:
    data, is_sample = data_line(params, layout)
    return RunFacts(
        data=data,
        is_sample=is_sample,
        generator=f"{generator_line(params, layout)}; {generation_line(params.generate)}",
        classifier=classifier_line(params.train),
        profile=profile_line(params, layout),
    )
