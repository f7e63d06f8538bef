"""DVC behaviour of ingest -> split -> dct in a real throwaway DVC repository.

The repository's dvc.yaml and params.yaml (with a tiny sample source) and a copy of
``src/`` (the stages' code dependencies) go into a fresh ``git init`` + ``dvc init``
folder; the stages run through the installed ``lymphaug`` CLI, exactly as ``dvc repro``
runs them for a user.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fixtures.dvc import set_param, sh

from lymphaug.common import manifest

STAGES = ("ingest", "split", "dct")

pytestmark = pytest.mark.skipif(
    shutil.which("dvc") is None or shutil.which("lymphaug") is None,
    reason="dvc and the lymphaug CLI must be installed",
)


def status(repo: Path) -> str:
    return sh(repo, "dvc", "status", "--with-deps", "dct")  # later stages are not run here


def repro(repo: Path) -> str:
    return sh(repo, "dvc", "repro", "dct")  # dct and what it depends on, not later stages


def test_repro_twice_then_one_dct_param(dvc_repo):
    if not (dvc_repo / "src" / "lymphaug" / "ingest.py").is_file():
        pytest.skip("the ingest stage is not in this checkout yet")
    repo = dvc_repo
    first = repro(repo)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first
    raw = manifest.read_table(repo / "data/raw/manifest.csv", manifest.RAW_COLUMNS)
    assert len(raw) == 18
    split = manifest.read_table(repo / "data/split.csv", manifest.SPLIT_COLUMNS)
    dct = manifest.read_table(repo / "data/dct/manifest.csv", manifest.DCT_COLUMNS)
    n_train = (split["split"] == "train").sum()
    assert len(dct) == 2 * n_train and (repo / "reports/dct_contact_sheet.png").is_file()
    assert (repo / "dvc.lock").is_file()

    second = repro(repo)
    assert "Running stage" not in second
    assert all(f"Stage '{s}' didn't change" in second for s in STAGES)
    assert "up to date" in status(repo)

    split_bytes = (repo / "data/split.csv").read_bytes()
    before = (repo / "data/dct/manifest.csv").stat().st_mtime_ns
    set_param(repo, "dct", "method2_sigma", 40.0)
    changed = status(repo)
    assert "dct:" in changed and "ingest:" not in changed and "split:" not in changed
    third = repro(repo)
    assert "Running stage 'dct'" in third
    assert "Running stage 'ingest'" not in third and "Running stage 'split'" not in third
    assert (repo / "data/split.csv").read_bytes() == split_bytes
    assert (repo / "data/dct/manifest.csv").stat().st_mtime_ns != before
    assert "up to date" in status(repo)
