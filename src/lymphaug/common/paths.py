"""Where every stage reads and writes, relative to the repository root.

One place for the layout so that dvc.yaml, the stages and the tests agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from lymphaug.common.files import short_digest

AUTOENCODER_METRICS = "autoencoder.json"


def fold_name(fold: int) -> str:
    """``fold_<f>``: the folder (or file stem) of fold f's outputs, and its work folders."""
    return f"fold_{fold}"


@dataclass(frozen=True)
class Layout:
    """Paths of one repository, seen from one fold.

    Every output learned from training images is per fold (:meth:`per_fold`: the DCT set,
    the generator, the synthetic set, every classifier, their reports); ingest's raw data
    and the reports across folds are not. ``fold`` is the stage's ``--fold`` (0 for the
    one split of ``split.k_folds: 0``: the same paths, no special case).
    """

    root: Path = Path(".")
    fold: int = 0

    @property
    def raw(self) -> Path:
        """data/raw/<class>/*.png plus manifest.csv (ingest)."""
        return self.root / "data" / "raw"

    @property
    def raw_manifest(self) -> Path:
        return self.raw / "manifest.csv"

    @property
    def raw_skipped(self) -> Path:
        """Files ingest left out (unreadable with on_unreadable: skip, duplicates); if any."""
        return self.raw / "skipped.txt"

    @property
    def raw_predefined_split(self) -> Path:
        """source=mat only: the MATLAB file's chosen fold (manifest.SPLIT_COLUMNS)."""
        return self.raw / "predefined_split.csv"

    def for_fold(self, fold: int) -> Layout:
        """The same repository seen from fold ``fold`` (every per-fold path below moves)."""
        return replace(self, fold=fold)

    def per_fold(self, path: Path) -> Path:
        """THE layout rule: fold f's copy of a per-fold output ``path`` is ``path/fold_<f>``
        (one folder per fold, so DVC's matrix stages each own one and a changed fold
        reruns alone); the split, one file per fold, is ``path/fold_<f>.csv``."""
        return path / fold_name(self.fold)

    @property
    def splits(self) -> Path:
        """data/splits/: one assignment file per fold (split writes them all)."""
        return self.root / "data" / "splits"

    @property
    def split_csv(self) -> Path:
        """data/splits/fold_<f>.csv: one row per raw image: path, class, split, fold."""
        return self.per_fold(self.splits).with_suffix(".csv")

    @property
    def dct(self) -> Path:
        """data/dct/fold_<f>/<method>/<class>/*.png plus manifest.csv (dct)."""
        return self.per_fold(self.root / "data" / "dct")

    @property
    def autoencoder_model(self) -> Path:
        """The from-scratch generator's trained AutoencoderKL, or a note that the base
        brings its own VAE (autoencoder): models/autoencoder/fold_<f>."""
        return self.per_fold(self.root / "models" / "autoencoder")

    @property
    def diffusion_base(self) -> Path:
        """Where a local base diffusers folder goes to be a DVC dependency of finetune (its
        files are git-ignored; ``finetune.base_model: models/diffusion_base``); one for all
        folds: it is learned from no image of ours."""
        return self.root / "models" / "diffusion_base"

    @property
    def diffusion_model(self) -> Path:
        """The fine-tuned diffusion pipeline or LoRA adapter (finetune):
        models/diffusion/fold_<f>."""
        return self.per_fold(self.root / "models" / "diffusion")

    @property
    def synthetic(self) -> Path:
        """data/synthetic/fold_<f>/<class>/*.png plus manifest.csv (generate)."""
        return self.per_fold(self.root / "data" / "synthetic")

    def synthetic_training_dir(self, configured: str | None) -> Path:
        """The synthetic images the ``synthetic`` condition trains on (``train.synthetic_dir``):
        null is :attr:`synthetic`; otherwise ``{fold}`` is this fold, relative to the
        repository root unless absolute."""
        if configured is None:
            return self.synthetic
        folder = Path(configured.replace("{fold}", str(self.fold)))
        return folder if folder.is_absolute() else self.root / folder

    def classifier(self, condition: str, seed: int) -> Path:
        """models/<condition>/fold_<f>/seed_<n>/ (train)."""
        return self.per_fold(self.root / "models" / condition) / f"seed_{seed}"

    def train_report(self, condition: str, seed: int) -> Path:
        """reports/train/<condition>/fold_<f>/seed_<n>/: metrics.json, history.csv,
        predictions.csv."""
        return self.per_fold(self.reports / "train" / condition) / f"seed_{seed}"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def fold_reports(self) -> Path:
        """reports/folds/fold_<f>/: the per-fold stages' sheets, curves and metrics (compare
        depends on reports/folds as a whole)."""
        return self.per_fold(self.reports / "folds")

    @property
    def autoencoder_metrics(self) -> Path:
        """The autoencoder's reconstruction error on training and unseen crops (the report
        quotes it)."""
        return self.fold_reports / AUTOENCODER_METRICS

    @property
    def dct_contact_sheet(self) -> Path:
        """Original / method 1 / method 2 side by side for a few training images (dct)."""
        return self.fold_reports / "dct_contact_sheet.png"

    @property
    def work(self) -> Path:
        """Resumable in-progress state (git- and DVC-ignored; DVC deletes outs before a rerun)."""
        return self.root / "work"

    def fold_work(self, stage: str) -> Path:
        """``work/<stage>/fold_<f>``: a per-fold stage's lock and work folders, so that two
        folds run side by side and neither prunes the other's work as stale."""
        return self.per_fold(self.work / stage)

    def work_dir(self, stage: str, identity: object, *subfolders: str) -> Path:
        """``work/<stage>/fold_<f>/<subfolders>/<digest of identity>``: a long stage's
        resumable state.

        ``identity`` is everything that changes the stage's result (JSON-able); other
        settings resume the same work, a change to it starts afresh in a new folder.
        """
        return self.fold_work(stage).joinpath(*subfolders, short_digest(identity))
