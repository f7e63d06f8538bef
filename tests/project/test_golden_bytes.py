"""The data stages write the same bytes on every install that follows constraints.txt.

Why: DVC and the report are only reproducible if "same params + same install = same
bytes" holds across machines, not just across reruns on one venv. A dependency that
resolves differently (pillow's zlib, numpy's RNG or resampling) could change the sample
set's hash, and so did numpy's CPU-specific SIMD kernels (the last test below). These
goldens are the hashes committed in dvc.lock for the quick profile; a change in them is
either a deliberate change of a data stage (rerun ``dvc repro`` and update both) or an
install drifting from the lock.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from lymphaug import dct, ingest, split
from lymphaug.common.paths import Layout

# DVC's md5 of each output (a folder: md5 of its sorted {md5, relpath} list, ".dir").
GOLDEN = {
    "data/raw": "ee5307f6fd7941b6454d895e83facc88.dir",
    "data/splits": "aca07a96448cd6e601cb7d2b2c6884a3.dir",
    "data/dct/fold_0": "3209cbd7a0855ffb442aa389e3cc1cb3.dir",
    "reports/folds/fold_0/dct_contact_sheet.png": "80c63c44ed441cbd08177eaf61f47099",
}


def dvc_md5(path: Path) -> str:
    """The md5 DVC records in dvc.lock for a file or a folder (dvc_data's Tree.digest)."""
    if path.is_file():
        return hashlib.md5(path.read_bytes()).hexdigest()
    entries = sorted(
        (
            {
                "md5": hashlib.md5(p.read_bytes()).hexdigest(),
                "relpath": p.relative_to(path).as_posix(),
            }
            for p in path.rglob("*")
            if p.is_file()
        ),
        key=lambda e: e["relpath"],
    )
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def locked_outputs(repo_root: Path) -> dict[str, str]:
    """path -> md5 of every stage output recorded in dvc.lock."""
    lock = yaml.safe_load((repo_root / "dvc.lock").read_text(encoding="utf-8"))
    return {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}


def test_goldens_are_the_committed_lock(repo_root):
    """The test and dvc.lock name the same bytes: neither can be updated alone."""
    locked = locked_outputs(repo_root)
    assert {path: locked[path] for path in GOLDEN} == GOLDEN


def test_sample_set_split_and_dct_are_byte_identical(tmp_path, default_params):
    if default_params.ingest.source != "sample":
        pytest.skip("params.yaml is not the quick profile (ingest.source is not sample)")
    layout = Layout(tmp_path)
    for stage in (ingest, split, dct):
        stage.run(default_params, layout, None)
    assert {path: dvc_md5(tmp_path / path) for path in GOLDEN} == GOLDEN


SAMPLE_DIGEST_SCRIPT = """
import hashlib
from lymphaug.sources.sample import sample_image
digest = hashlib.md5()
for class_index in range(3):
    for index in range(12):  # the float32 generator differed in 5 of these 36 on AVX2 vs SSE4
        digest.update(sample_image(0, class_index, index, height=312, width=417).tobytes())
print(digest.hexdigest())
"""


def test_sample_set_does_not_depend_on_the_cpus_simd_path():
    """Another CPU gives the same sample set: numpy's SIMD kernels (AVX2, AVX-512) differ in
    the last bits of sin, exp, power..., which once flipped pixels after rounding, so a fresh
    clone on a different CPU got another data/raw hash. Here the same images are made with
    every dispatched instruction set numpy found on this CPU switched off (as on an older
    CPU), in a fresh process, and must be the same bytes."""
    import os
    import subprocess
    import sys

    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    dispatched = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    if not dispatched:
        pytest.skip("this CPU has no SIMD path beyond numpy's baseline to switch off")

    def digest(**env: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", SAMPLE_DIGEST_SCRIPT],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()

    assert digest() == digest(NPY_DISABLE_CPU_FEATURES=" ".join(dispatched))
