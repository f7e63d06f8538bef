"""Tiny raw data sets and split CSVs for the diffusion tests (no dependency on ingest/split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lymphaug.common.config import parse_params
from lymphaug.common.files import sha256_file
from lymphaug.common.images import save_png
from lymphaug.common.manifest import RAW_COLUMNS, SPLIT_COLUMNS, write_table
from lymphaug.common.paths import Layout

CLASSES = ["CLL", "FL", "MCL"]
COLOURS = {"CLL": (200, 80, 160), "FL": (120, 60, 200), "MCL": (230, 170, 200)}


def make_dataset(root: Path, per_class: int = 4, width: int = 48, height: int = 36) -> Layout:
    """data/raw/<class>/*.png (class-coloured blobs) + manifest.csv + data/split.csv.

    Per class: all but two images are train, one val, one test.
    """
    layout = Layout(root)
    rng = np.random.default_rng(0)
    raw_rows, split_rows = [], []
    yy, xx = np.mgrid[0:height, 0:width]
    for cls in CLASSES:
        for i in range(per_class):
            img = np.full((height, width, 3), 245, np.float64)
            for _ in range(6):
                cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, 7)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = COLOURS[cls]
            img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
            rel = f"{cls}/{cls}_{i:03d}.png"
            save_png(img, layout.raw / rel)
            sha = sha256_file(layout.raw / rel)
            raw_rows.append([rel, cls, sha, width, height, "test"])
            split = "val" if i == per_class - 2 else "test" if i == per_class - 1 else "train"
            split_rows.append([rel, cls, split, 0])
    write_table(pd.DataFrame(raw_rows, columns=RAW_COLUMNS), layout.raw_manifest, RAW_COLUMNS)
    write_table(pd.DataFrame(split_rows, columns=SPLIT_COLUMNS), layout.split_csv, SPLIT_COLUMNS)
    return layout


def tiny_params(tmp_path: Path, finetune: dict | None = None, generate: dict | None = None):
    """Quick-profile params shrunk for tests; MLflow in a SQLite file under tmp_path."""
    ft = {
        "resolution": 16,
        "max_steps": 6,
        "batch_size": 2,
        "checkpoint_every": 3,
        "validation_every": 1000,
        **(finetune or {}),
    }
    gen = {"per_class": 2, "steps": 3, "batch_size": 2, **(generate or {})}
    return parse_params(
        {
            "classes": CLASSES,
            "finetune": ft,
            "generate": gen,
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }
    )
