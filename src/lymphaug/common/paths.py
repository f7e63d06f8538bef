"""Where every stage reads and writes, relative to the repository root.

One place for the layout so that dvc.yaml, the stages and the tests agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lymphaug.common.files import short_digest

AUTOENCODER_METRICS = "autoencoder.json"


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

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

    @property
    def split_csv(self) -> Path:
        """One row per raw image: path, class, split (train/val/test), fold."""
        return self.root / "data" / "split.csv"

    @property
    def dct(self) -> Path:
        """data/dct/<method>/<class>/*.png plus manifest.csv (dct)."""
        return self.root / "data" / "dct"

    @property
    def autoencoder_model(self) -> Path:
        """The from-scratch generator's trained AutoencoderKL, or a note that the base
        brings its own VAE (autoencoder)."""
        return self.root / "models" / "autoencoder"

    @property
    def diffusion_base(self) -> Path:
        """Where a local base diffusers folder goes to be a DVC dependency of finetune (its
        files are git-ignored; ``finetune.base_model: models/diffusion_base``)."""
        return self.root / "models" / "diffusion_base"

    @property
    def diffusion_model(self) -> Path:
        """The fine-tuned diffusion pipeline or LoRA adapter (finetune)."""
        return self.root / "models" / "diffusion"

    @property
    def synthetic(self) -> Path:
        """data/synthetic/<class>/*.png plus manifest.csv (generate)."""
        return self.root / "data" / "synthetic"

    def synthetic_training_dir(self, configured: str) -> Path:
        """The synthetic images the ``synthetic`` condition trains on (``train.synthetic_dir``):
        relative to the repository root unless absolute (default: :attr:`synthetic`)."""
        folder = Path(configured)
        return folder if folder.is_absolute() else self.root / folder

    def classifier(self, condition: str, seed: int) -> Path:
        """models/<condition>/seed_<n>/ (train)."""
        return self.root / "models" / condition / f"seed_{seed}"

    def train_report(self, condition: str, seed: int) -> Path:
        """reports/train/<condition>/seed_<n>/: metrics.json, history.csv, predictions.csv."""
        return self.root / "reports" / "train" / condition / f"seed_{seed}"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def autoencoder_metrics(self) -> Path:
        """The autoencoder's reconstruction error on training and unseen crops (the report
        quotes it)."""
        return self.reports / AUTOENCODER_METRICS

    @property
    def dct_contact_sheet(self) -> Path:
        """Original / method 1 / method 2 side by side for a few training images (dct)."""
        return self.reports / "dct_contact_sheet.png"

    @property
    def work(self) -> Path:
        """Resumable in-progress state (git- and DVC-ignored; DVC deletes outs before a rerun)."""
        return self.root / "work"

    def work_dir(self, stage: str, identity: object, *subfolders: str) -> Path:
        """``work/<stage>/<subfolders>/<digest of identity>``: a long stage's resumable state.

        ``identity`` is everything that changes the stage's result (JSON-able); other
        settings resume the same work, a change to it starts afresh in a new folder.
        """
        return self.work.joinpath(stage, *subfolders, short_digest(identity))
