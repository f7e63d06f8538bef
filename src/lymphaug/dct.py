"""``lymphaug dct --fold F``: DCT-augment fold F's training images into data/dct/fold_<F>
(its manifest stamped with the fold and its split file's sha256), draw the contact sheet.

The methods themselves (what they do, why, and how they are seeded) are in
:mod:`lymphaug.augmentation.dct`; this module reads params and does the I/O. One dct runs
at a time per fold (a lock in ``work/dct/fold_<F>``); holding it, a run removes a killed
run's temporary folder.
"""

from __future__ import annotations

import argparse

from lymphaug.augmentation.dct import augment_dataset, training_images
from lymphaug.augmentation.sheet import dct_contact_sheet
from lymphaug.common import manifest
from lymphaug.common.config import Params
from lymphaug.common.errors import DataError
from lymphaug.common.files import (
    atomic_path,
    remove_stale_temps,
    sha256_file,
    write_bytes_atomic,
)
from lymphaug.common.images import png_bytes
from lymphaug.common.locks import exclusive, lock_path
from lymphaug.common.paths import Layout


def run(params: Params, layout: Layout, args: argparse.Namespace) -> int:
    with exclusive(lock_path(layout.fold_work("dct")), f"lymphaug dct --fold {layout.fold}"):
        remove_stale_temps(layout.dct)
        remove_stale_temps(layout.dct_contact_sheet)
        return _run(params, layout)


def _run(params: Params, layout: Layout) -> int:
    cfg = params.dct
    raw = manifest.read_table(layout.raw_manifest, manifest.RAW_COLUMNS)
    split = manifest.read_table(layout.split_csv, manifest.SPLIT_COLUMNS)
    train = training_images(raw, split, layout.split_csv)
    if train.empty:
        raise DataError(f"{layout.split_csv}: no training images")
    with atomic_path(layout.dct) as tmp:
        rows = augment_dataset(layout.raw, train, split=split, cfg=cfg, out_root=tmp)
        rows = manifest.with_provenance(
            rows, fold=layout.fold, split_sha256=sha256_file(layout.split_csv)
        )
        manifest.write_table(rows, tmp / "manifest.csv", manifest.DCT_COLUMNS)
    sheet = dct_contact_sheet(layout.raw, train, split, cfg)
    write_bytes_atomic(layout.dct_contact_sheet, png_bytes(sheet))
    counts = rows.groupby("method").size().to_dict()
    print(
        f"dct: {len(train)} training images -> {counts} augmented images in {layout.dct}; "
        f"contact sheet {layout.dct_contact_sheet}"
    )
    if "method1" in cfg.methods and cfg.copies_per_image > 1:
        print("dct: method1 is deterministic: one copy per image (copies_per_image is method2's)")
    return 0
