"""``lymphaug <stage>``: one entry point for every pipeline stage.

Each stage lives in its own module with a ``run(params, layout, args)`` function;
they are imported lazily so ``lymphaug --help`` stays fast and a data stage does
not pay for importing diffusers.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from lymphaug.common import tracking
from lymphaug.common.config import CONDITIONS, SplitConfig, load_params
from lymphaug.common.errors import ConfigError, LymphaugError
from lymphaug.common.files import disk_full, is_disk_full
from lymphaug.common.paths import Layout
from lymphaug.common.quiet import quiet_diffusers, quiet_libraries

# stage name -> (module, one-line help). Order = pipeline order.
STAGES: dict[str, tuple[str, str]] = {
    "ingest": (
        "lymphaug.ingest",
        "build data/raw/<class>/*.png + manifest from the source in params (sample, folder, "
        "archive, mat)",
    ),
    "split": (
        "lymphaug.split",
        "stratified, seeded train/val/test assignment per fold -> data/splits/fold_<f>.csv",
    ),
    "dct": (
        "lymphaug.dct",
        "DCT-augment one fold's training images (method1, method2) -> data/dct/fold_<f>",
    ),
    "autoencoder": (
        "lymphaug.autoencoder",
        "train the from-scratch generator's AutoencoderKL (base_model: scratch) -> "
        "models/autoencoder",
    ),
    "finetune": (
        "lymphaug.finetune",
        "fine-tune the Stable Diffusion UNet (full or LoRA) on training images -> models/diffusion",
    ),
    "generate": (
        "lymphaug.generate",
        "generate synthetic images per class with the fine-tuned model -> data/synthetic",
    ),
    "train": (
        "lymphaug.train",
        "train the classifier for one condition (base, dct, synthetic) and seed, log to MLflow",
    ),
    "compare": (
        "lymphaug.compare",
        "statistics across conditions and seeds, image quality -> reports/report.md",
    ),
    "profile": (
        "lymphaug.profile",
        "write a params preset (e.g. 'paper') into params.yaml, so DVC tracks the real values",
    ),
}


# Stages that learn from one fold's training images: ``--fold F`` (dvc.yaml: each split.folds)
PER_FOLD = ("dct", "autoencoder", "finetune", "generate", "train")

# Stages whose MLflow child run the CLI opens (the others open their own, with metrics):
# every stage that runs has a run, with the same param keys (tracking.all_params).
TRACKED_BY_CLI = ("ingest", "split", "dct")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lymphaug",
        description="Lymphoma histology augmentation study: DVC stages, tracked in MLflow.",
        epilog="Usually run through `dvc repro`; each stage reads params.yaml.",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument("--root", default=".", help="repository root (default: %(default)s)")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")
    for name, (module, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module) if _light(name) else None
        add_args = getattr(mod, "add_arguments", None) if mod else None
        if add_args:
            add_args(p)
        else:
            _add_known_arguments(name, p)
    return parser


def _light(name: str) -> bool:
    """Stages whose modules import quickly enough to load for --help."""
    return name in ("profile",)


def _add_known_arguments(name: str, p: argparse.ArgumentParser) -> None:
    """Arguments of heavy stages, declared here so --help does not import torch."""
    if name in PER_FOLD:
        p.add_argument(
            "--fold",
            type=int,
            default=0,
            help="which fold's training images (default 0, the one split of k_folds 0; "
            "dvc.yaml: each split.folds)",
        )
    if name == "train":
        p.add_argument(
            "--condition",
            required=True,
            choices=CONDITIONS,
            help="training set: base (the fold's train split), dct (+ data/dct/fold_<f>), "
            "synthetic (+ data/synthetic/fold_<f>)",
        )
        p.add_argument(
            "--seed",
            required=True,
            type=int,
            help="seed of the initial weights, shuffles and crops (dvc.yaml: each train.seeds)",
        )
        p.add_argument("--no-resume", action="store_true", help="ignore an earlier checkpoint")
    if name in ("autoencoder", "finetune", "generate"):
        p.add_argument("--no-resume", action="store_true", help="ignore earlier progress")
    if name in ("autoencoder", "finetune"):
        p.add_argument(
            "--resume-from",
            metavar="CHECKPOINT",
            help="resume from this checkpoint folder (default: the newest one for these params)",
        )


def check_fold(fold: int, split: SplitConfig) -> int:
    """``--fold`` must name one of the folds split writes (0..k_folds-1; 0 alone for k 0)."""
    if not 0 <= fold < split.n_folds:
        raise ConfigError(
            f"--fold {fold} is out of range: split.k_folds = {split.k_folds} gives "
            + (f"folds 0..{split.n_folds - 1}" if split.k_folds else "one split, fold 0")
        )
    return fold


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name = STAGES[args.stage][0]
    quiet_libraries()  # only the library messages a user cannot act on (common/quiet.py)
    try:
        if args.stage == "profile":
            return importlib.import_module(module_name).run(Path(args.params), args) or 0
        params = load_params(args.params)  # validate before paying for heavy imports
        if args.stage in ("finetune", "generate"):
            quiet_diffusers()
        layout = Layout(Path(args.root))
        if args.stage in PER_FOLD:
            layout = layout.for_fold(check_fold(args.fold, params.split))
        module = importlib.import_module(module_name)
        if args.stage in TRACKED_BY_CLI:
            fold = layout.fold if args.stage in PER_FOLD else None
            with tracking.stage_run(params, Path(args.root), args.stage, fold=fold):
                return module.run(params, layout, args) or 0
        return module.run(params, layout, args) or 0
    except LymphaugError as err:
        print(f"lymphaug {args.stage}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a full disk outside an atomic write: still one line
        if not is_disk_full(err):
            raise
        where = getattr(err, "filename", None) or Path(args.root).resolve()
        print(f"lymphaug {args.stage}: error: {disk_full(where)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lymphaug {args.stage}: interrupted; rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
