"""Base models (tiny, hub id, local diffusers folder) and the fine-tuned model's on-disk form.

The fine-tuned model in ``models/diffusion`` is self-describing: ``lymphaug_model.json``
says which method made it and what it rests on.

- ``full``: the whole pipeline via ``save_pretrained`` (``StableDiffusionPipeline.from_pretrained``
  loads it with no reference to the base);
- ``lora``: only the adapter (``pytorch_lora_weights.safetensors``, a few MB for SD v1.5), loaded
  with ``load_lora_weights`` on top of the recorded base, so nothing silently changes underneath
  the adapter: a ``tiny`` base is rebuilt from its seed and its UNet checked, a local folder's
  weight files are checked against their recorded digest, a hub id is loaded at the recorded
  commit.

Which base weights a model rests on is its ``base_fingerprint`` (:func:`resolve_base`): also in
finetune's work hash and its MLflow tags.

A local folder (a base model, or ``models/diffusion``) may hold pickle-based weights (``.bin``);
each is opened with ``weights_only=True`` first (:func:`check_pickles`), so a file that would run
code is refused by name whatever the installed diffusers or transformers do with it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lymphaug.common.errors import DataError, LymphaugError, one_line
from lymphaug.common.files import sha256_file, umask_modes
from lymphaug.diffusion.tiny import TINY, build_tiny_pipeline

INFO_FILE = "lymphaug_model.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelError(LymphaugError):
    """A base or fine-tuned model cannot be found or loaded."""


@dataclass(frozen=True)
class ModelInfo:
    """What ``models/diffusion`` holds; written by finetune, read by generate."""

    method: str
    base_model: str
    tiny_seed: int
    resolution: int
    classes: list[str]
    prompts: dict[str, str]
    base_fingerprint: str = ""  # the base's version: see BaseRef.version
    fingerprint: str = ""  # sha256 over the saved weight files
    steps: int = 0
    extra: dict = field(default_factory=dict)


def unet_fingerprint(unet) -> str:
    """A short hash of a module's weights (to check a rebuilt tiny base is the same one)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class BaseRef:
    """``finetune.base_model`` resolved: what to load and which version of it.

    ``version``: a local folder's :func:`weights_digest`, a hub id's commit hash (the
    ``revision`` asked for, resolved), "" for ``tiny`` (its seed names it) and ``scratch``.
    """

    name: str
    kind: str  # tiny | path | hub
    source: str  # the folder, or the hub id
    version: str = ""


def weights_digest(folder: Path) -> str:
    """16 hex digits over a folder's weight files (relative path and sha256 of each)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + sha256_file(path).encode())
    return digest.hexdigest()[:16]


def base_kind(base_model: str, root: Path) -> str:
    """Classify ``finetune.base_model``: 'tiny', 'path' or 'hub'."""
    if base_model == TINY:
        return "tiny"
    path = Path(base_model).expanduser()
    if (
        path.is_absolute()
        or (root / path).exists()
        or base_model.startswith((".", "~"))
        or not _HUB_ID.match(base_model)
    ):
        return "path"
    return "hub"


def _resolve(base_model: str, root: Path) -> Path:
    path = Path(base_model).expanduser()
    return path if path.is_absolute() else root / path


def check_pickles(folder: Path, what: str) -> None:
    """Open every pickle-based weights file under ``folder`` as tensors only, or refuse it.

    On the meta device, so no weights are read: a few milliseconds even for Stable Diffusion.
    """
    for path in sorted(p for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES):
        try:
            torch.load(path, map_location="meta", weights_only=True)
        except Exception as err:
            raise ModelError(f"{what}: {path}: refusing to load ({one_line(err)})") from None


def resolve_base(base_model: str, root: Path = Path("."), revision: str | None = None) -> BaseRef:
    """Which weights ``finetune.base_model`` (at ``revision``, hub ids only) names, checked.

    A hub id's revision (a branch or tag; default: main) is resolved to its commit hash by
    huggingface_hub: online from the Hub, offline from the cache's refs.
    """
    kind = base_kind(base_model, root)
    if revision is not None and kind != "hub":
        raise ModelError(
            f"finetune.revision={revision!r} applies to a hub id only, not to "
            f"finetune.base_model={base_model!r}; set it to null"
        )
    if kind == "tiny":
        return BaseRef(base_model, kind, base_model)
    if kind == "path":
        path = _resolve(base_model, root)
        if not path.exists():
            raise ModelError(f"finetune.base_model: {path} does not exist")
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"finetune.base_model: {path} is not a diffusers folder (no model_index.json); "
                "save one with pipeline.save_pretrained(...)"
            )
        check_pickles(path, "finetune.base_model")
        return BaseRef(base_model, kind, str(path), weights_digest(path))
    from huggingface_hub import resolve_revision

    try:
        commit = resolve_revision(base_model, revision=revision).resolved
    except Exception as err:  # not found, no access, unreachable and not cached: all "cannot"
        raise ModelError(
            f"finetune.base_model: cannot resolve {base_model!r} at revision "
            f"{revision or 'main'!r} ({cause_chain(err)}); {_HUB_HINT}"
        ) from None
    return BaseRef(base_model, kind, base_model, commit)


_HUB_HINT = (
    "no internet or unknown id? download it elsewhere with "
    "StableDiffusionPipeline.from_pretrained(...).save_pretrained(<dir>) and set "
    "finetune.base_model to that folder"
)


def cause_chain(err: BaseException) -> str:
    """An error and what caused it, in one line: libraries chain the real reason (the Hub
    unreachable, a file missing) behind a generic message (diffusers: "check out the root
    cause in the stacktrace above", a traceback a stage never prints)."""
    parts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        line = one_line(err, limit=300)
        if not any(line.split(": ", 1)[-1] in part for part in parts):  # said already
            parts.append(line)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return "; caused by ".join(parts)


def open_base(ref: BaseRef, seed: int):
    """The base StableDiffusionPipeline (fp32, CPU) of a resolved ``ref`` (a hub id: at
    its resolved commit, so every file comes from that one version)."""
    if ref.kind == "tiny":
        return build_tiny_pipeline(seed)
    from diffusers import StableDiffusionPipeline

    where = ref.source if ref.kind == "path" else f"{ref.source}@{ref.version}"
    hint = "is the folder complete?" if ref.kind == "path" else _HUB_HINT
    revision = {"revision": ref.version} if ref.kind == "hub" else {}
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            ref.source, safety_checker=None, requires_safety_checker=False, **revision
        )
    except Exception as err:  # diffusers/hub raise many types; all mean "cannot load this"
        raise ModelError(
            f"finetune.base_model: cannot load {where!r} ({cause_chain(err)}); {hint}"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_base(base_model: str, seed: int, root: Path = Path("."), revision: str | None = None):
    """Load the base StableDiffusionPipeline (fp32, CPU) named by ``finetune.base_model``."""
    return open_base(resolve_base(base_model, root, revision), seed)


def read_info(model_dir: Path) -> ModelInfo:
    path = model_dir / INFO_FILE
    if not path.is_file():
        raise DataError(
            f"{model_dir}: not a fine-tuned model (no {INFO_FILE}); run `lymphaug finetune`"
        )
    try:
        return ModelInfo(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise DataError(f"{path}: unreadable model description ({err})") from None


def write_info(model_dir: Path, info: ModelInfo) -> ModelInfo:
    """Fingerprint the weight files in ``model_dir`` and write the description next to them.

    The fingerprint names the model in generate's work-folder hash, so new weights never
    resume images made by old ones.
    """
    info = ModelInfo(**{**asdict(info), "fingerprint": weights_digest(model_dir)})
    (model_dir / INFO_FILE).write_text(json.dumps(asdict(info), indent=2, sort_keys=True) + "\n")
    return info


def save_finetuned(pipe, model_dir: Path, info: ModelInfo) -> ModelInfo:
    """Write the fine-tuned model into ``model_dir`` (an empty, temporary folder)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    if info.method == "lora":
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
        StableDiffusionPipeline.save_lora_weights(
            model_dir, unet_lora_layers=layers, weight_name=LORA_WEIGHTS
        )
    else:
        pipe.save_pretrained(model_dir)
    umask_modes(model_dir)
    return write_info(model_dir, info)


def load_finetuned(model_dir: Path, root: Path = Path(".")):
    """Load ``models/diffusion`` as a ready StableDiffusionPipeline; returns (pipe, info)."""
    info = read_info(model_dir)
    if info.method == "lora":
        pipe = _lora_base(info, model_dir, root)
        try:
            pipe.load_lora_weights(model_dir, weight_name=LORA_WEIGHTS)
        except (OSError, ValueError) as err:
            raise DataError(f"{model_dir}: cannot load the LoRA adapter ({err})") from None
        return pipe, info
    from diffusers import StableDiffusionPipeline

    check_pickles(model_dir, "the fine-tuned model")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            model_dir, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as err:
        raise DataError(f"{model_dir}: cannot load the fine-tuned pipeline ({err})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe, info


def _lora_base(info: ModelInfo, model_dir: Path, root: Path):
    """The very base the adapter was trained on (see the module docstring), or a clear error."""
    hub = base_kind(info.base_model, root) == "hub"
    # a hub id at the recorded commit (a commit hash resolves without asking the Hub)
    ref = resolve_base(info.base_model, root, (info.base_fingerprint or None) if hub else None)
    changed = ref.kind == "path" and info.base_fingerprint not in ("", ref.version)
    pipe = open_base(ref, info.tiny_seed)
    if ref.kind == "tiny" and info.base_fingerprint:
        changed = unet_fingerprint(pipe.unet) != info.base_fingerprint
    if changed:
        raise ModelError(
            f"{model_dir}: the base model {info.base_model!r} is not the one the LoRA adapter "
            "was trained on (its weights differ); rerun `lymphaug finetune`"
        )
    return pipe


@contextmanager
def cpu_threads(base_model: str, num_threads: int = 0) -> Iterator[None]:
    """``num_threads`` intra-op threads (finetune.num_threads) on a CPU, restored after.

    0: one for the tiny and the from-scratch models, torch's default for real ones. The small
    models' kernels are too small to split across threads; on a shared 2-core machine extra
    threads only spin against each other (measured: 0.08 s/step with one thread, 0.2-12 s
    with two under load; scratch at 64 px under load: 1.4 s/step with one, 3.9 with two).
    Under contention one thread was 3-4x faster for Stable Diffusion too: hence the setting.
    """
    before = torch.get_num_threads()
    if not torch.cuda.is_available():
        if num_threads:
            torch.set_num_threads(num_threads)
        elif base_model in ("tiny", "scratch"):
            torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
