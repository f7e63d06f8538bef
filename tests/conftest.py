"""Shared fixtures: the repository root, real-data location, tiny params."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fixtures.dvc import set_param, sh

from lymphaug.common.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "lymphoma"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def default_params() -> Params:
    """The committed params.yaml (the quick profile)."""
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/lymphoma, or skip: those images are never copied into the repo."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data set not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(autouse=True)
def _isolated_mlflow_env(monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI (and tracking.setup the HTTP retry
    bounds); keep them from leaking across tests.

    monkeypatch records the variables' state before the test and restores it after,
    whatever a test (or MLflow inside it) wrote to os.environ meanwhile.
    """
    from lymphaug.common.tracking import HTTP_BOUNDS  # tracking.setup sets these too

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", *HTTP_BOUNDS):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def dvc_repo(tmp_path, repo_root) -> Path:
    """This project's pipeline in a fresh git + DVC repo, with a tiny sample source."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(repo_root / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(repo_root / "params.yaml", repo / "params.yaml")
    shutil.copytree(
        repo_root / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    # compare depends on the presets (the report names the profile params match)
    shutil.copytree(repo_root / "profiles", repo / "profiles")
    # finetune depends on the local-base folder (models/diffusion_base), empty but for its README
    shutil.copytree(repo_root / "models" / "diffusion_base", repo / "models" / "diffusion_base")
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    set_param(repo, "ingest", "source", "sample")
    set_param(repo, "ingest.sample", "per_class", 6)
    set_param(repo, "ingest.sample", "width", 96)
    set_param(repo, "ingest.sample", "height", 72)
    set_param(repo, "train", "patch_size", 24)  # 64 px patches do not fit 48 x 36 at scale 0.5
    return repo
