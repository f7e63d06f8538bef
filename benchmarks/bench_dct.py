"""DCT augmentation throughput on the real lymphoma set (not a test).

    python benchmarks/bench_dct.py [--n 374] [--repeats 3]

Prints images/s for each method end to end (decode, transform, encode + write PNG,
through the stage's own :func:`lymphaug.augmentation.dct.augment_dataset`) and transform-only,
beside a plain ``scipy.fft.dctn``/``idctn`` round trip of the same batches in the same
process (same dtype and thread count), so the ratio survives a busy machine. Peak
memory: traced numpy/Python allocations (tracemalloc, separate untimed pass) and the
process's peak RSS. ``--naive`` adds the reference study's per-pixel method 2 on a
couple of images. Targets (2 cores): transform-only <= 1.5x the plain round trip;
end to end >= 30 images/s per method.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft

from lymphaug.augmentation.dct import BATCH, WORKERS, augment_dataset, augmented_copies
from lymphaug.common.config import DctConfig
from lymphaug.common.images import read_rgb

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lymphoma"
METHODS = ("method1", "method2")


class Clock:
    """Best-of-repeats wall time and CPU time (all threads) for named work.

    On a shared machine the load changes from second to second; timing the contenders
    interleaved (batch by batch, repeat by repeat) keeps their ratio honest.
    """

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def new_repeat(self) -> None:
        for d in (self.wall, self.cpu):
            for v in d.values():
                v.append(0.0)

    def time(self, name: str, fn) -> None:
        self.wall.setdefault(name, [0.0])
        self.cpu.setdefault(name, [0.0])
        c, w = time.process_time(), time.perf_counter()
        fn()
        self.wall[name][-1] += time.perf_counter() - w
        self.cpu[name][-1] += time.process_time() - c

    def best(self, name: str) -> tuple[float, float]:
        return min(self.wall[name]), min(self.cpu[name])


def plain_round_trip(batches: list[np.ndarray], dtype=np.float32) -> None:
    for b in batches:
        x = b.astype(dtype)
        scipy.fft.idctn(
            scipy.fft.dctn(x, axes=(1, 2), norm="ortho", workers=WORKERS),
            axes=(1, 2),
            norm="ortho",
            workers=WORKERS,
        )


def naive_method2(img: np.ndarray, sigma: float) -> np.ndarray:
    """The reference's method 2 shape (per-pixel Python loop), with a real sigma."""
    out = np.empty_like(img)
    for c in range(3):
        coef = scipy.fft.dctn(img[:, :, c].astype(np.float64), norm="ortho")
        for i in range(coef.shape[0]):
            for j in range(coef.shape[1]):
                if i or j:
                    coef[i, j] += sigma * (random.random() - 0.5)
        out[:, :, c] = np.clip(np.rint(scipy.fft.idctn(coef, norm="ortho")), 0, 255)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--n", type=int, default=374, help="images to use (default: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive", type=int, default=2, help="images for the per-pixel reference")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"bench_dct: skipped: {args.data} not found (the real lymphoma set)")
        return 0
    files = sorted(args.data.glob("*/*.png"))[: args.n]
    rel = [f.relative_to(args.data).as_posix() for f in files]
    images = pd.DataFrame({"path": rel, "class": [r.split("/")[0] for r in rel]})
    split = images.assign(split="train", fold=-1)  # benchmark only: every image "train"
    cfg = DctConfig()
    print(
        f"{len(files)} images from {args.data}, batch {BATCH}, {WORKERS} thread(s), "
        f"best of {args.repeats}"
    )

    with ThreadPoolExecutor(WORKERS) as pool:
        t = time.perf_counter()
        arrays = list(pool.map(read_rgb, files))
        decode = time.perf_counter() - t
    batches = [np.stack(arrays[i : i + BATCH]) for i in range(0, len(arrays), BATCH)]
    bpaths = [rel[i : i + BATCH] for i in range(0, len(rel), BATCH)]
    n = len(arrays)
    print(f"decode only (threads): {n / decode:7.1f} img/s")

    clock = Clock()
    for r in range(args.repeats):
        clock.new_repeat()
        for b, p in zip(batches, bpaths, strict=True):
            clock.time("plain32", lambda b=b: plain_round_trip([b]))
            clock.time("plain64", lambda b=b: plain_round_trip([b], np.float64))
            for m in METHODS:
                clock.time(m, lambda b=b, p=p, m=m: augmented_copies(b, p, m, cfg))
        with tempfile.TemporaryDirectory() as tmp:
            for m in METHODS:
                out = Path(tmp) / f"{m}{r}"
                one = DctConfig(methods=[m])
                clock.time(
                    f"e2e {m}",
                    lambda o=out, c=one: augment_dataset(
                        args.data, images, split=split, cfg=c, out_root=o
                    ),
                )
    pw, pc = clock.best("plain32")
    for name, label in (("plain32", "float32 (same batches)"), ("plain64", "float64")):
        w, c = clock.best(name)
        print(f"plain dctn+idctn {label:23s}: {n / w:6.1f} img/s  (cpu {c / n * 1e3:5.2f} ms/img)")
    for m in METHODS:
        w, c = clock.best(m)
        ew, ec = clock.best(f"e2e {m}")
        print(
            f"{m}: transform-only {n / w:6.1f} img/s = {w / pw:.2f}x plain wall, "
            f"{c / pc:.2f}x plain cpu | end to end {n / ew:5.1f} img/s "
            f"(cpu {ec / n * 1e3:4.1f} ms/img)"
        )
    for m in METHODS:
        with tempfile.TemporaryDirectory() as tmp:
            tracemalloc.start()
            augment_dataset(
                args.data,
                images,
                split=split,
                cfg=DctConfig(methods=[m]),
                out_root=Path(tmp) / "t",
            )
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        print(f"{m}: traced peak memory end to end {peak / 2**20:.0f} MiB")

    if args.naive:
        rng_imgs = arrays[: args.naive]
        t = time.perf_counter()
        for img in rng_imgs:
            naive_method2(img, cfg.method2_sigma)
        per = (time.perf_counter() - t) / len(rng_imgs)
        print(f"naive per-pixel method2 (reference style): {per:.2f} s/img = {1 / per:.1f} img/s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
