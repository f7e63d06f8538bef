"""The whole pipeline through `dvc repro`, on a tiny sample, as a user runs it.

Every stage of dvc.yaml runs for real (ingest ... compare) in a throwaway DVC repo;
then the DVC and MLflow views a user looks at must hold what the issues promise.
"""

from __future__ import annotations

import json
import shutil

import pytest
from fixtures.dvc import set_param, sh

from lymphaug.common.paths import Layout

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc must be installed"),
]

TINY = {
    "autoencoder": {"resolution": 32, "max_steps": 4, "batch_size": 4, "checkpoint_every": 2},
    "finetune": {
        "resolution": 32,
        "max_steps": 4,
        "batch_size": 4,
        "checkpoint_every": 2,
        "validation_every": 4,
    },
    "generate": {"per_class": 2, "steps": 2, "batch_size": 6, "contact_sheet_per_class": 2},
    "train": {"epochs": 2, "input_size": 64, "batch_size": 8},
    "compare": {"bootstrap_resamples": 200},
}


def test_dvc_repro_runs_every_stage_and_records_everything(dvc_repo):
    repo = dvc_repo
    for section, values in TINY.items():
        for key, value in values.items():
            set_param(repo, section, key, value)

    first = sh(repo, "dvc", "repro")
    for stage in ("ingest", "split", "compare"):
        assert f"Running stage '{stage}'" in first
    for stage in ("dct", "autoencoder", "finetune", "generate"):  # per fold: the one split
        assert f"Running stage '{stage}@0'" in first
    layout = Layout(repo)
    for cond in ("base", "dct", "synthetic"):
        for seed in (0, 1):
            assert f"Running stage 'train-{cond}@0-{seed}'" in first
            metrics = json.loads((layout.train_report(cond, seed) / "metrics.json").read_text())
            assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["fold"] == 0
            assert layout.classifier(cond, seed).is_dir()

    assert "Running stage" not in sh(repo, "dvc", "repro")  # second repro: nothing to do
    shown = sh(repo, "dvc", "metrics", "show", "--json")
    assert (
        "reports/metrics.json" in shown
        and "reports/train/synthetic/fold_0/seed_1/metrics.json" in shown
    )
    report = (repo / "reports/report.md").read_text()
    assert "2 seeds" in report and "synthetic" in report
    assert "](folds/fold_0/synthetic_contact_sheet.png)" in report  # generate's sheet

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lymphaug")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lymphaug.role") == "parent"]
    assert len(parents) == 1
    children = {
        r.info.run_name
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    trains = {f"train {c} fold=0 seed={s}" for c in ("base", "dct", "synthetic") for s in (0, 1)}
    assert trains <= children
    assert {"ingest", "split"} <= children
    assert {f"{s} fold=0" for s in ("dct", "autoencoder", "finetune", "generate")} <= children
    child = next(r for r in runs if r.info.run_name == "train dct fold=0 seed=1")
    history = client.get_metric_history(child.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
