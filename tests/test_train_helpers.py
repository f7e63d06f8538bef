"""A tiny, learnable data set laid out as ingest/split/dct/generate write it (no tests here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lymphaug.common import manifest
from lymphaug.common.config import parse_params
from lymphaug.common.images import png_bytes, save_png
from lymphaug.common.paths import Layout

CLASSES = ["CLL", "FL", "MCL"]
TINT = {"CLL": (200, 80, 160), "FL": (120, 60, 200), "MCL": (220, 140, 120)}


def _image(cls: str, rng: np.random.Generator, h: int = 48, w: int = 64) -> np.ndarray:
    base = np.array(TINT[cls], dtype=float)
    img = base + rng.normal(0, 25, (h, w, 3))
    if cls == "FL":  # a texture cue too
        img[::4] -= 60
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(
    root: Path, per_split=(6, 3, 3), dct: bool = True, synthetic: bool = True, seed: int = 0
) -> Layout:
    """data/raw + manifest, data/split.csv, data/dct + manifest, data/synthetic + manifest."""
    layout = Layout(root)
    rng = np.random.default_rng(seed)
    raw_rows, split_rows = [], []
    for cls in CLASSES:
        i = 0
        for split, n in zip(manifest.SPLITS, per_split, strict=True):
            for _ in range(n):
                rel = f"{cls}/{i:03d}.png"
                arr = _image(cls, rng)
                save_png(arr, layout.raw / rel)
                raw_rows.append([rel, cls, "x", arr.shape[1], arr.shape[0], "test"])
                split_rows.append([rel, cls, split, 0])
                i += 1
    manifest.write_table(
        pd.DataFrame(raw_rows, columns=manifest.RAW_COLUMNS), layout.raw_manifest,
        manifest.RAW_COLUMNS,
    )  # fmt: skip
    split_df = pd.DataFrame(split_rows, columns=manifest.SPLIT_COLUMNS)
    manifest.write_table(split_df, layout.split_csv, manifest.SPLIT_COLUMNS)
    train_paths = split_df[split_df["split"] == "train"]["path"]
    if dct:
        rows = []
        for method in ("method1", "method2"):
            for src in train_paths:
                rel = f"{method}/{src}"
                save_png(_image(src.split("/")[0], rng), layout.dct / rel)
                rows.append([rel, src.split("/")[0], method, 0, src])
        manifest.write_table(
            pd.DataFrame(rows, columns=manifest.DCT_COLUMNS), layout.dct / "manifest.csv",
            manifest.DCT_COLUMNS,
        )  # fmt: skip
    if synthetic:
        rows = []
        for cls in CLASSES:
            for k in range(3):
                rel = f"{cls}/{k:03d}.png"
                out = layout.synthetic / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(png_bytes(_image(cls, rng, 40, 40)))
                rows.append([rel, cls, "p", k, "ddpm", 2, 1.0, "txt2img", 0.5, ""])
        manifest.write_table(
            pd.DataFrame(rows, columns=manifest.SYNTHETIC_COLUMNS),
            layout.synthetic / "manifest.csv", manifest.SYNTHETIC_COLUMNS,
        )  # fmt: skip
    return layout


def tiny_params(tmp: Path | None = None, **train):
    """Params for a fast CPU run (resnet18 at 32 px unless overridden)."""
    t = {
        "arch": "resnet18", "weights": "none", "freeze_backbone": False, "input_size": 32,
        "batch_size": 6, "epochs": 3, "learning_rate": 1.0e-3, "seeds": [0],
    }  # fmt: skip
    t.update(train)
    data = {"train": t}
    if tmp is not None:
        data["mlflow"] = {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "t"}
    return parse_params(data)
