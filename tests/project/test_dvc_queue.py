"""`dvc exp run --queue` + `dvc queue start` runs experiments side by side (README, "Scale
out"): on a real git + DVC repository with a one-stage pipeline reading a param.

The stage is a barrier: each experiment leaves a marker in a shared folder and waits (up
to WAIT_S) for the other's, so ``together`` is true only if two queue workers ran them at
the same time; run one after the other, the first would wait out WAIT_S and say false.
It also records the CUDA_VISIBLE_DEVICES it ran with: what the per-GPU recipe relies on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.dvc import sh

WAIT_S = 45  # only a failing run waits it out; a loaded machine starts workers slowly
STAGE = """\
import json, os, pathlib, time, yaml
p = yaml.safe_load(open('params.yaml'))
barrier = pathlib.Path(p['barrier'])
(barrier / str(p['x'])).touch()
deadline = time.time() + {wait}
while len(os.listdir(barrier)) < 2 and time.time() < deadline:
    time.sleep(0.1)
together = len(os.listdir(barrier)) >= 2
gpu = os.environ.get('CUDA_VISIBLE_DEVICES', '')
json.dump(dict(y=2 * p['x'], together=together, gpu=gpu), open('out.json', 'w'))
"""


def queued_repo(tmp_path: Path) -> Path:
    """A one-stage pipeline committed in git + DVC, and two experiments queued (x = 2, 3)."""
    repo, barrier = tmp_path / "repo", tmp_path / "barrier"
    repo.mkdir()
    barrier.mkdir()
    (repo / "stage.py").write_text(STAGE.format(wait=WAIT_S))
    (repo / "params.yaml").write_text(f"x: 1\nbarrier: {barrier}\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  double:\n"
        f"    cmd: {sys.executable} stage.py\n"
        "    deps: [stage.py]\n"
        "    params: [x]\n"
        "    metrics:\n"
        "      - out.json:\n"
        "          cache: false\n"
    )
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "test@example.com")
    sh(repo, "git", "config", "user.name", "test")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "a one-stage pipeline")
    for x in (2, 3):
        sh(repo, "dvc", "exp", "run", "--queue", "-S", f"x={x}", "-n", f"x{x}")
    return repo


def start_workers(repo: Path, jobs: int, **env: str) -> None:
    """`dvc queue start -j jobs` with ``env`` added. Its output goes to a file: the workers
    it spawns inherit its stdout, so reading that through a pipe would wait for them to end.
    """
    with (repo.parent / "queue-start.log").open("a") as log:
        subprocess.run(
            ["dvc", "queue", "start", "-j", str(jobs)],
            cwd=repo,
            env={**os.environ, "DVC_NO_ANALYTICS": "1", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )


def wait_for(repo: Path, done, what: str) -> str:
    """Poll `dvc queue status` until ``done(status)``; fail naming ``what`` after 4 x WAIT_S."""
    deadline = time.monotonic() + 4 * WAIT_S
    while time.monotonic() < deadline:
        status = sh(repo, "dvc", "queue", "status")
        if done(status):
            return status
        time.sleep(1)
    raise AssertionError(f"no {what} after {4 * WAIT_S} s:\n{status}")


def finished(repo: Path) -> dict[str, tuple[int, dict]]:
    """Both experiments succeeded; name -> (x, out.json) from `dvc exp show --json`."""
    status = wait_for(repo, lambda s: "Queued" not in s and "Running" not in s, "finish")
    assert "Failed" not in status and status.count("Success") == 2, status
    results = {}
    for commit in json.loads(sh(repo, "dvc", "exp", "show", "--json")):
        for exp in commit.get("experiments") or []:
            data = exp["revs"][0]["data"]
            results[exp["name"]] = (
                data["params"]["params.yaml"]["data"]["x"],
                data["metrics"]["out.json"]["data"],
            )
    return results


@pytest.mark.slow
def test_two_queued_experiments_run_on_two_workers(tmp_path):
    repo = queued_repo(tmp_path)
    try:
        start_workers(repo, 2)
        results = finished(repo)
    finally:
        sh(repo, "dvc", "queue", "stop")  # the workers stop on their own once idle; be sure
    assert results == {
        "x2": (2, {"y": 4, "together": True, "gpu": ""}),
        "x3": (3, {"y": 6, "together": True, "gpu": ""}),
    }
    # the workspace with the params of one experiment: restored from DVC's run-cache, not
    # run again (README: the final full run collects what the queued experiments trained)
    text = (repo / "params.yaml").read_text().replace("x: 1", "x: 3")
    (repo / "params.yaml").write_text(text)
    assert "Stage 'double' is cached - skipping run" in sh(repo, "dvc", "repro")
    assert json.loads((repo / "out.json").read_text())["y"] == 6


@pytest.mark.slow
def test_one_worker_per_gpu(tmp_path):
    """README's recipe: start the workers one at a time, each with its CUDA_VISIBLE_DEVICES
    (`-j 2` the second time: worker 1 exists, so only worker 2 is started, with device 1)."""
    repo = queued_repo(tmp_path)
    try:
        start_workers(repo, 1, CUDA_VISIBLE_DEVICES="0")
        wait_for(repo, lambda s: "1 active" in s, "worker running the first experiment")
        start_workers(repo, 2, CUDA_VISIBLE_DEVICES="1")
        results = finished(repo)
    finally:
        sh(repo, "dvc", "queue", "stop")
    assert sorted(out["gpu"] for _, out in results.values()) == ["0", "1"]
    assert all(out["together"] for _, out in results.values())
    assert {name: x for name, (x, _) in results.items()} == {"x2": 2, "x3": 3}
