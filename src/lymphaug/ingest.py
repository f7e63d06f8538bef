"""``lymphaug ingest``: build the canonical raw data set every later stage reads.

Output: ``data/raw/<class>/<name>.png`` (RGB, 8-bit, deterministic PNG bytes) and
``data/raw/manifest.csv`` (manifest.RAW_COLUMNS; ``sha256`` is the sha256 of the
written PNG, ``source`` names the original file). Whatever the source (``sample``,
``folder``, ``archive``, ``mat``), images go through one path: decode, convert to
RGB 8-bit, optional Lanczos resize, encode, in a thread pool (decoding and zlib
release the GIL: about 1.6x on 2 cores). The whole folder is written to a
temporary path and renamed into place, so a failed ingest leaves no data/raw.

Validation, each problem named with its file:

- class folders must match ``classes`` exactly (an extra folder or a class with
  no images is an error, all of them reported at once);
- unreadable files (a truncated image, ``notes.txt``): ``on_unreadable: fail``
  names every one in a single error; ``skip`` leaves them out and lists them in
  ``data/raw/skipped.txt`` and on stderr;
- the same image (same pixels, hence same PNG sha256) under two classes is an
  error naming both files: its label is ambiguous;
- the same image twice within one class: the first (by source path) is kept,
  the others are dropped with a warning and listed in ``skipped.txt``. Keeping
  them would let one image land in both the training and the test split.

One ingest runs at a time (a lock in ``work/ingest``); holding it, a run first removes
what a killed one left: ``data/.raw.*.tmp``, unpacked copies and partial downloads in
``work/ingest``, and cached archives of other checksums.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lymphaug.common import manifest
from lymphaug.common.config import IngestConfig, Params
from lymphaug.common.errors import DataError, LymphaugError
from lymphaug.common.files import atomic_path, remove_stale_temps, sha256_bytes, writing
from lymphaug.common.images import decode_rgb, png_bytes
from lymphaug.common.locks import exclusive, lock_path
from lymphaug.common.paths import Layout
from lymphaug.common.progress import progress
from lymphaug.sources import archive as archive_src
from lymphaug.sources import mat as mat_src
from lymphaug.sources.folder import find_class_root, output_names, scan_class_folders
from lymphaug.sources.sample import sample_image


@dataclass(frozen=True)
class Item:
    """One image to ingest: where it goes, what it came from, how to get its pixels."""

    cls: str
    name: str  # output file name within the class folder
    source: str  # for the manifest and for error messages
    load: Callable[[], np.ndarray]


@dataclass(frozen=True)
class Result:
    item: Item
    sha256: str = ""
    width: int = 0
    height: int = 0
    error: str = ""


def resized(array: np.ndarray, size: list[int] | None) -> np.ndarray:
    """Scale to [width, height] with Lanczos (antialiased when shrinking)."""
    if size is None or (array.shape[1], array.shape[0]) == tuple(size):
        return array
    img = Image.fromarray(array, "RGB").resize(tuple(size), Image.Resampling.LANCZOS)
    return np.asarray(img)


def convert(item: Item, out: Path, size: list[int] | None) -> Result:
    """Decode, resize and write one image; a bad input becomes an error Result."""
    try:
        array = resized(item.load(), size)
    except DataError as err:
        return Result(item, error=str(err))
    data = png_bytes(array)
    path = out / item.cls / item.name
    with writing(path):
        path.write_bytes(data)
    return Result(item, sha256_bytes(data), array.shape[1], array.shape[0])


def sample_items(params: Params) -> list[Item]:
    cfg = params.ingest.sample
    return [
        Item(
            cls,
            f"{i:04d}.png",
            f"sample/seed{cfg.seed}/{cls}/{i:04d}",
            lambda c=c, i=i: sample_image(cfg.seed, c, i, height=cfg.height, width=cfg.width),
        )
        for c, cls in enumerate(params.classes)
        for i in range(cfg.per_class)
    ]


def folder_items(root: Path, classes: list[str], prefix: str = "", label: str = "") -> list[Item]:
    """Items for a folder of class folders; ``source`` is ``<prefix><class>/<rel path>``."""
    items = []
    for cls, files in scan_class_folders(root, classes, label or str(root)).items():
        names = output_names([f.rel for f in files])
        for f, name in zip(files, names, strict=True):
            items.append(Item(cls, name, f"{prefix}{cls}/{f.rel}", lambda p=f.path: decode_rgb(p)))
    return items


def process(items: list[Item], out: Path, size: list[int] | None, workers: int) -> list[Result]:
    """Convert every item, in parallel threads (PIL and zlib release the GIL)."""
    for cls in sorted({i.cls for i in items}):
        (out / cls).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(lambda it: convert(it, out, size), items)
        return list(progress(results, total=len(items), desc="ingest", unit="img"))


def check_results(
    results: list[Result], classes: list[str], cfg: IngestConfig
) -> tuple[list[Result], list[str]]:
    """Apply the unreadable and duplicate policies; return kept results and a skip report.

    Every problem found is reported in one error, so one run shows the user all
    there is to fix.
    """
    problems = []
    bad = [r for r in results if r.error]
    if bad and cfg.on_unreadable == "fail":
        lines = "".join(f"\n  {r.item.source}: {r.error}" for r in bad)
        problems.append(
            f"{len(bad)} unreadable file(s) (set ingest.on_unreadable: skip to leave them out):"
            + lines
        )
    report = [f"{r.item.source}\tunreadable: {r.error}" for r in bad]
    good = [r for r in results if not r.error]

    first: dict[str, Result] = {}
    kept, clashes = [], []
    for r in sorted(good, key=lambda r: (classes.index(r.item.cls), r.item.source)):
        seen = first.get(r.sha256)
        if seen is None:
            first[r.sha256] = r
            kept.append(r)
        elif seen.item.cls != r.item.cls:
            clashes.append(f"\n  {seen.item.source} and {r.item.source}")
        else:
            report.append(f"{r.item.source}\tduplicate of {seen.item.source}")
    if clashes:
        problems.append(
            f"{len(clashes)} image(s) appear under two classes (same pixels), so their label "
            "is ambiguous; remove one copy of each:" + "".join(clashes)
        )
    empty = [c for c in classes if not any(r.item.cls == c for r in kept)]
    if empty:
        problems.append(f"class(es) {empty} have no readable images")
    if problems:
        raise DataError("\n".join(problems))
    return kept, report


def ingest(
    items: list[Item],
    layout: Layout,
    *,
    params: Params,
    workers: int,
    predefined: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Write the raw data set for ``items`` atomically at data/raw; return the manifest.

    ``predefined`` (source=mat): a split shipped with the data, written beside the
    manifest for the images that were kept.
    """
    cfg = params.ingest
    with atomic_path(layout.raw) as tmp:
        results = process(items, tmp, cfg.resize, workers)
        kept, report = check_results(results, params.classes, cfg)
        dropped = {(r.item.cls, r.item.name) for r in results} - {
            (r.item.cls, r.item.name) for r in kept
        }
        for cls, name in dropped:
            (tmp / cls / name).unlink(missing_ok=True)
        df = pd.DataFrame(
            {
                "path": [f"{r.item.cls}/{r.item.name}" for r in kept],
                "class": [r.item.cls for r in kept],
                "sha256": [r.sha256 for r in kept],
                "width": [r.width for r in kept],
                "height": [r.height for r in kept],
                "source": [r.item.source for r in kept],
            }
        )
        manifest.write_table(df, tmp / "manifest.csv", manifest.RAW_COLUMNS)
        if predefined is not None:
            rows = predefined[predefined["path"].isin(set(df["path"]))]
            out = tmp / layout.raw_predefined_split.relative_to(layout.raw)
            manifest.write_table(rows, out, manifest.SPLIT_COLUMNS)
        if report:
            (tmp / layout.raw_skipped.relative_to(layout.raw)).write_text(
                "\n".join(sorted(report)) + "\n"
            )
            print(
                f"ingest: left out {len(report)} file(s), listed in {layout.raw_skipped}:",
                file=sys.stderr,
            )
            for line in sorted(report)[:20]:
                print(f"  {line}", file=sys.stderr)
    return df


def mat_items(path: Path, params: Params) -> tuple[list[Item], pd.DataFrame]:
    """Items for the benchmark's MATLAB file, and every fold's division as a split table
    (one row per image and fold; ``fold`` 0-based)."""
    cfg = params.ingest.mat
    data = mat_src.load(path, cfg.images_key, len(params.classes), cfg.fold)
    digits = max(3, len(str(len(data.images) - 1)))
    trains = [set(index.tolist()) for index in data.fold_train_indices]
    items, rows = [], []
    for k, (array, label) in enumerate(zip(data.images, data.labels, strict=True)):
        cls, name = params.classes[label], f"{k:0{digits}d}.png"
        source = f"{path.name}:{cfg.images_key}{{1}}{{{k + 1}}}"
        items.append(Item(cls, name, source, lambda a=array: mat_src.array_to_rgb8(a)))
        rows += [
            (f"{cls}/{name}", cls, "train" if k in train else "val", fold)
            for fold, train in enumerate(trains)
        ]
    return items, pd.DataFrame(rows, columns=manifest.SPLIT_COLUMNS)


def _local(path: str, layout: Layout) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else layout.root / p


def clean_stale(layout: Layout, cfg: IngestConfig) -> list[Path]:
    """Remove what an interrupted ingest left (call it holding the lock); returns what went."""
    keep = cfg.archive.sha256 if cfg.source == "archive" else None
    return [*remove_stale_temps(layout.raw), *archive_src.clean_work(layout.work / "ingest", keep)]


def run(params: Params, layout: Layout, args: object) -> int:
    with exclusive(lock_path(layout.work / "ingest"), "lymphaug ingest"):
        stale = clean_stale(layout, params.ingest)
        if stale:
            shown = ", ".join(str(p) for p in stale[:5]) + (" ..." if len(stale) > 5 else "")
            print(f"ingest: removed {len(stale)} leftover(s) of an earlier run: {shown}")
        return _run(params, layout)


def _run(params: Params, layout: Layout) -> int:
    cfg = params.ingest
    start = time.perf_counter()
    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    if cfg.source == "sample":
        what = f"sample (seed {cfg.sample.seed})"
        df = ingest(sample_items(params), layout, params=params, workers=workers)
    elif cfg.source == "folder":
        if not cfg.folder:
            raise LymphaugError("ingest.source is folder but ingest.folder is not set")
        root = _local(cfg.folder, layout)
        if not root.is_dir():
            raise DataError(
                f"ingest.folder = {cfg.folder!r}: no folder at {root}; set ingest.folder in "
                "params.yaml to the folder holding one sub-folder per class"
            )
        what = f"folder {cfg.folder}"
        df = ingest(folder_items(root, params.classes), layout, params=params, workers=workers)
    elif cfg.source == "archive":
        url = cfg.archive.url
        if not url:
            raise LymphaugError("ingest.source is archive but ingest.archive.url is not set")
        what = f"archive {url}"
        work = layout.work / "ingest"
        local = archive_src.fetch(url, cfg.archive.sha256, layout.root, work)
        name = archive_src.archive_name(url)
        unpacked = archive_src.unpack_folder(work)
        limits = archive_src.Limits(
            max_bytes=cfg.archive.max_unpacked_bytes, max_ratio=cfg.archive.max_ratio
        )
        try:
            archive_src.unpack(local, unpacked, url, limits=limits)
            try:
                root = find_class_root(unpacked, params.classes)
            except DataError as err:
                raise DataError(f"{url}: {err}") from None
            prefix = f"{name}:{root.relative_to(unpacked).as_posix()}/".replace(":./", ":")
            items = folder_items(
                root, params.classes, prefix, label=f"{url}:{prefix.split(':', 1)[1]}"
            )
            df = ingest(items, layout, params=params, workers=workers)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
    else:
        if not cfg.mat.path:
            raise LymphaugError("ingest.source is mat but ingest.mat.path is not set")
        what = f"MATLAB file {cfg.mat.path} (fold {cfg.mat.fold})"
        mat_path = _local(cfg.mat.path, layout)
        if not mat_path.is_file():
            raise DataError(
                f"ingest.mat.path = {cfg.mat.path!r}: no file at {mat_path}; set ingest.mat.path "
                "in params.yaml to the benchmark's .mat file"
            )
        items, predefined = mat_items(mat_path, params)
        df = ingest(items, layout, params=params, workers=workers, predefined=predefined)
    counts = ", ".join(f"{c} {int((df['class'] == c).sum())}" for c in params.classes)
    print(
        f"ingest: {len(df)} images ({counts}) from {what} -> {layout.raw} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0
