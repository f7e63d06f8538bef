"""The data stages write the same bytes on every install that follows constraints.txt.

Why: DVC and the report are only reproducible if "same params + same install = same
bytes" holds across machines, not just across reruns on one venv. A dependency that
resolves differently (pillow's zlib, numpy's RNG or resampling) once changed the sample
set's hash on a fresh install while every test still passed. These goldens are the hashes
committed in dvc.lock for the quick profile; a change in them is either a deliberate change
of a data stage (rerun ``dvc repro`` and update both) or an install drifting from the lock.
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
    "data/raw": "a2a2ac4b31ddbd44ed3c4473b696555b.dir",
    "data/split.csv": "eb41de0722de312b5c3957f04a166fa2",
    "data/dct": "29b88c83a980f8bbdff1879dafae6501.dir",
    "reports/dct_contact_sheet.png": "0d273d6cdc5be75206d7beff0fcd74ed",
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
