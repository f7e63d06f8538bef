"""The DCT contact sheet: what each augmentation does, for a person to look at.

Rows: the first ``contact_sheet_per_class`` training images of each class (sorted by
path, so the sheet is stable); columns: the original and each configured method,
copy 0 -- exactly the pixels the stage writes. Drawn with PIL (no matplotlib import,
byte-identical output for identical inputs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from lymphaug.augmentation.dct import augmented_copies
from lymphaug.common import manifest
from lymphaug.common.config import DctConfig
from lymphaug.common.images import read_rgb

THUMB_WIDTH = 208  # half the real set's width
LABEL_WIDTH = 150
HEADER = 28
PAD = 6
TITLES = {"method1": "method 1 (coefficient band)", "method2": "method 2 (coefficient noise)"}


def _font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType
        return ImageFont.load_default()


def sheet_images(images: pd.DataFrame, per_class: int) -> pd.DataFrame:
    """The first ``per_class`` images (by path) of every class, classes in sorted order."""
    ordered = images.sort_values(["class", "path"], kind="stable")
    return ordered.groupby("class", sort=True).head(per_class).reset_index(drop=True)


def dct_contact_sheet(
    raw_root, images: pd.DataFrame, split: pd.DataFrame, cfg: DctConfig
) -> np.ndarray:
    """An RGB uint8 array: original | method columns, one row per chosen training image."""
    chosen = sheet_images(images, cfg.contact_sheet_per_class)
    manifest.assert_train_only(chosen["path"], split, "dct contact sheet")
    columns = ["original", *cfg.methods]
    tiles: list[list[np.ndarray]] = []
    for path in chosen["path"]:
        original = read_rgb(raw_root / path)[None]
        row = [original[0]]
        for method in cfg.methods:
            row.append(augmented_copies(original, [path], method, cfg)[0][1][0])
        tiles.append(row)
    scale = THUMB_WIDTH / max(t[0].shape[1] for t in tiles) if tiles else 1.0
    thumb_h = max(round(t[0].shape[0] * scale) for t in tiles) if tiles else 0
    width = LABEL_WIDTH + len(columns) * (THUMB_WIDTH + PAD)
    height = HEADER + len(tiles) * (thumb_h + PAD)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for j, name in enumerate(columns):
        draw.text((LABEL_WIDTH + j * (THUMB_WIDTH + PAD), 6), TITLES.get(name, name), "black", font)
    for i, (row, (path, cls)) in enumerate(
        zip(tiles, chosen[["path", "class"]].itertuples(index=False), strict=True)
    ):
        y = HEADER + i * (thumb_h + PAD)
        draw.text((PAD, y + 4), f"{cls}\n{path}", "black", font)
        for j, tile in enumerate(row):
            size = (round(tile.shape[1] * scale), round(tile.shape[0] * scale))
            thumb = Image.fromarray(tile).resize(size, Image.Resampling.LANCZOS)
            sheet.paste(thumb, (LABEL_WIDTH + j * (THUMB_WIDTH + PAD), y))
    return np.asarray(sheet)
