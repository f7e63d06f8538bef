"""Helpers for the throwaway DVC repositories of the end-to-end tests (see conftest.dvc_repo).

The repository's dvc.yaml and params.yaml (with a tiny sample source) and a copy of
``src/`` (the stages' code dependencies) go into a fresh ``git init`` + ``dvc init``
folder; stages run through the installed ``lymphaug`` CLI, as ``dvc repro`` runs them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml


def sh(cwd: Path, *cmd: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout + proc.stderr


def set_param(repo: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    for part in section.split("."):
        node = node[part]
    node[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
