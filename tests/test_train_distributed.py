"""Two CPU processes (torchrun, gloo) train like one and write outputs once (rank 0)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from fixtures.classifier_data import make_dataset, tiny_params
from mlflow.tracking import MlflowClient

from lymphaug.common import tracking
from lymphaug.common.paths import Layout


def _setup(root):
    make_dataset(root, dct=False, synthetic=False)
    params = tiny_params(root, epochs=2, arch="alexnet", input_size=64, freeze_backbone=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump()))


def _cmd(root, nproc: int | None) -> list[str]:
    cli = [
        "--params",
        str(root / "params.yaml"),
        "--root",
        str(root),
        "train",
        "--condition",
        "base",
        "--seed",
        "0",
    ]
    if nproc is None:
        return [sys.executable, "-m", "lymphaug.cli", *cli]
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    return [*run, "--standalone", "-m", "lymphaug.cli", *cli]


@pytest.mark.slow
def test_two_processes_match_one_in_structure_and_write_once(tmp_path):
    env = {**os.environ, "LYMPHAUG_PIPELINE_ID": "dist", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    results = {}
    for nproc in (None, 2):
        root = tmp_path / f"n{nproc or 1}"
        _setup(root)
        out = subprocess.run(
            _cmd(root, nproc), env=env, capture_output=True, text=True, timeout=180
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.count("train base fold=0 seed=0: best epoch") == 1  # rank 0 reports
        rep = Layout(root).train_report("base", 0)
        metrics = json.loads((rep / "metrics.json").read_text())
        history = pd.read_csv(rep / "history.csv")
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        exp = client.get_experiment_by_name("t")
        runs = client.search_runs([exp.experiment_id])
        roles = sorted(r.data.tags[tracking.ROLE_TAG] for r in runs)
        assert roles == ["child", "parent"]  # one child: only rank 0 logged
        assert not list((root / "work" / "train").rglob("checkpoint.pt"))  # removed when done
        leftovers = [p for p in root.rglob(".*.tmp")]
        assert not leftovers
        results[nproc] = (metrics, history)
        shutil.rmtree(root / "data")
    (m1, h1), (m2, h2) = results[None], results[2]
    assert m1.keys() == m2.keys() and m1["per_class"].keys() == m2["per_class"].keys()
    assert list(h1.columns) == list(h2.columns) and len(h1) == len(h2) == 2
    assert m1["n_train"] == m2["n_train"]  # both saw the whole training set per epoch
