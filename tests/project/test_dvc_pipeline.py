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
from lymphaug.common.paths import Layout

STAGES = ("ingest", "split", "dct@0")  # the quick profile: one fold

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
    layout = Layout(repo)  # the quick profile: one split, fold 0's paths
    raw = manifest.read_table(layout.raw_manifest, manifest.RAW_COLUMNS)
    assert len(raw) == 18
    split = manifest.read_table(layout.split_csv, manifest.SPLIT_COLUMNS)
    dct = manifest.read_table(layout.dct / "manifest.csv", manifest.DCT_COLUMNS)
    n_train = (split["split"] == "train").sum()
    assert len(dct) == 2 * n_train and layout.dct_contact_sheet.is_file()
    assert (repo / "dvc.lock").is_file()

    second = repro(repo)
    assert "Running stage" not in second
    assert all(f"Stage '{s}' didn't change" in second for s in ("ingest", "split", "dct@0"))
    assert "up to date" in status(repo)

    split_bytes = layout.split_csv.read_bytes()
    before = (layout.dct / "manifest.csv").stat().st_mtime_ns
    set_param(repo, "dct", "method2_sigma", 40.0)
    changed = status(repo)
    assert "dct@0:" in changed and "ingest:" not in changed and "split:" not in changed
    third = repro(repo)
    assert "Running stage 'dct@0'" in third
    assert "Running stage 'ingest'" not in third and "Running stage 'split'" not in third
    assert layout.split_csv.read_bytes() == split_bytes
    assert (layout.dct / "manifest.csv").stat().st_mtime_ns != before
    assert "up to date" in status(repo)


def test_one_folds_changed_split_reruns_only_that_folds_stages(dvc_repo):
    """k folds: every per-fold stage depends on its own fold's split file, so a change to
    fold 1's assignment puts fold 1's stages (DCT, generator, every classifier) out of date
    and leaves fold 0's alone; DVC's own view (dvc status, dvc.yaml resolved by DVC)."""
    repo = dvc_repo
    set_param(repo, "split", "k_folds", 2)
    set_param(repo, "split", "folds", [0, 1])
    stages = sh(repo, "dvc", "stage", "list", "--name-only").split()
    per_fold = ["dct", "autoencoder", "finetune", "generate"]
    trains = [f"train-{c}" for c in ("base", "dct", "synthetic")]
    expected = {f"{s}@{f}" for s in per_fold for f in (0, 1)}
    expected |= {f"{t}@{f}-{seed}" for t in trains for f in (0, 1) for seed in (0, 1)}
    assert expected <= set(stages) and not any(s in stages for s in ("dct", "train-base@0"))
    first = repro(repo)
    assert "Running stage 'dct@0'" in first and "Running stage 'dct@1'" in first
    assert sorted(p.name for p in (repo / "data/splits").iterdir()) == ["fold_0.csv", "fold_1.csv"]
    for fold in (0, 1):  # each fold's DCT set from its own training images
        layout = Layout(repo, fold)
        split = manifest.read_table(layout.split_csv, manifest.SPLIT_COLUMNS)
        dct = manifest.read_table(layout.dct / "manifest.csv", manifest.DCT_COLUMNS)
        manifest.assert_train_only(dct["source"], split, f"fold {fold}")
        assert set(dct["fold"]) == {fold}
    fold1 = Layout(repo, 1).split_csv
    split = manifest.read_table(fold1, manifest.SPLIT_COLUMNS)
    first_val = split.index[split["split"] == "val"][0]
    split.loc[first_val, "split"] = "train"  # fold 1's assignment changes, fold 0's does not
    manifest.write_table(split, fold1, manifest.SPLIT_COLUMNS)
    # DVC's status: fold 1's DCT stage is out of date, fold 0's is not
    changed = sh(repo, "dvc", "status", "dct@0", "dct@1")
    assert "dct@1:" in changed and "modified:           data/splits/fold_1.csv" in changed
    assert "dct@0" not in changed and "fold_0" not in changed
    # and every per-fold stage, as DVC resolves dvc.yaml, reads its own fold's file and data
    # only (status of the stages not run here would list all their deps as new)
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        deps = {s.name: {d.def_path for d in s.deps} for s in dvc.index.stages}
    for name in expected:
        fold = int(name.split("@")[1].split("-")[0])
        splits = {d for d in deps[name] if d.startswith("data/splits")}
        assert splits == {f"data/splits/fold_{fold}.csv"}, (name, deps[name])
        other = f"fold_{1 - fold}"
        assert not [d for d in deps[name] if other in d], (name, deps[name])
