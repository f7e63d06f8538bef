"""`dvc exp run --queue` + `dvc queue start -j 2` runs experiments side by side (README,
"Scale out"): on a real git + DVC repository with a one-stage pipeline reading a param.

The stage is a barrier: each experiment leaves a marker in a shared folder and waits (up
to WAIT_S) for the other's, so ``together`` is true only if the two queue workers ran them
at the same time; run one after the other, the first would wait out WAIT_S and say false.
"""

from __future__ import annotations

import json
import sys
import time

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
json.dump(dict(y=2 * p['x'], together=len(os.listdir(barrier)) >= 2), open('out.json', 'w'))
"""


@pytest.mark.slow
def test_two_queued_experiments_run_on_two_workers(tmp_path):
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
    status, deadline = "", time.monotonic() + 4 * WAIT_S
    try:
        sh(repo, "dvc", "queue", "start", "-j", "2")
        while time.monotonic() < deadline:
            status = sh(repo, "dvc", "queue", "status")
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(1)
    finally:
        sh(repo, "dvc", "queue", "stop")  # the workers stop on their own once idle; be sure
    assert "Failed" not in status and status.count("Success") == 2, status

    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json"))
    results = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            data = exp["revs"][0]["data"]
            results[exp["name"]] = (
                data["params"]["params.yaml"]["data"]["x"],
                data["metrics"]["out.json"]["data"],
            )
    assert results == {
        "x2": (2, {"y": 4, "together": True}),
        "x3": (3, {"y": 6, "together": True}),
    }
