"""MLflow logging of the train stage against real stores: SQLite in tmp_path, a real server."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from fixtures.classifier_data import make_dataset, tiny_params
from fixtures.mlflow_server import free_port
from fixtures.mlflow_server import mlflow_server as running_mlflow_server
from mlflow.tracking import MlflowClient

from lymphaug.cli import main
from lymphaug.common import tracking
from lymphaug.common.config import MlflowConfig
from lymphaug.common.files import md5_file
from lymphaug.common.paths import Layout

EPOCH_KEYS = {"train_loss", "train_acc", "val_loss", "val_acc"}


def _write_params(root, uri: str | None = None, **train):
    params = tiny_params(root, epochs=2, freeze_backbone=True, **train)
    data = params.model_dump()
    if uri:
        data["mlflow"]["tracking_uri"] = uri
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    return params


def _train(root, condition: str, seed: int) -> int:
    argv = ["--params", str(root / "params.yaml"), "--root", str(root), "train"]
    return main([*argv, "--condition", condition, "--seed", str(seed)])


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LYMPHAUG_PIPELINE_ID", "test-pipeline")


def _children(client, exp_id):
    runs = client.search_runs([exp_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'child'")
    return {r.info.run_name: r for r in runs}


def test_sqlite_store_parent_children_curves_artifacts(tmp_path):
    make_dataset(tmp_path, synthetic=False)
    _write_params(tmp_path)
    assert _train(tmp_path, "base", 0) == 0
    assert _train(tmp_path, "dct", 0) == 0
    assert _train(tmp_path, "base", 0) == 0  # a rerun replaces its child, never duplicates
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("t")
    parents = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'parent'"
    )
    assert len(parents) == 1
    children = _children(client, exp.experiment_id)
    assert sorted(children) == ["train base fold=0 seed=0", "train dct fold=0 seed=0"]
    for name, run in children.items():
        assert run.data.tags[tracking.PARENT_TAG] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        assert set(run.data.metrics) >= EPOCH_KEYS and "test_accuracy" in run.data.metrics
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == [1, 2]
        assert run.data.params["condition"] == name.split()[1]
        assert (
            run.data.params["train.arch"] == "resnet18" and "dct.method2_sigma" in run.data.params
        )
        assert "data.split.sha256" in run.data.tags and run.data.tags["seed"] == "0"
        assert run.data.tags["fold"] == "0" and run.data.params["fold"] == "0"
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"confusion_matrix.png", "training_curves.png", "predictions.csv"} <= arts
        contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
        assert {"training", "validation", "test"} <= contexts
    assert "data.dct.sha256" in children["train dct fold=0 seed=0"].data.tags
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts beside the store, not in the cwd
    models = client.search_logged_models([exp.experiment_id])
    assert {"classifier-base-fold0-seed0", "classifier-dct-fold0-seed0"} <= {m.name for m in models}
    # the parent's duration covers its children: it ends when the last child ended
    parent = client.get_run(parents[0].info.run_id).info
    assert parent.start_time <= min(r.info.start_time for r in children.values())
    assert parent.end_time >= max(r.info.end_time for r in children.values())
    assert parent.status == "FINISHED"
    # one registry version per training run, pointing at DVC's copy of the weights
    out = Layout(tmp_path)
    versions = client.search_model_versions("name = 'lymphaug-classifier-base'")
    assert len(versions) == 2  # base seed 0 ran twice
    newest = max(versions, key=lambda v: int(v.version))
    weights = out.classifier("base", 0) / "model.pt"
    assert newest.tags["model.md5"] == md5_file(weights) and newest.tags["seed"] == "0"
    assert newest.tags["fold"] == "0"
    model_id = newest.source.removeprefix("models:/")  # the logged model, by its id
    assert client.get_logged_model(model_id).name == "classifier-base-fold0-seed0"
    assert newest.run_id == children["train base fold=0 seed=0"].info.run_id
    run = client.get_run(newest.run_id)  # the run page lists it under "Logged models"
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    got = mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path / "d"))
    ref = json.loads((Path(got) / "dvc_reference.json").read_text())
    assert ref["folder"] == "models/base/fold_0/seed_0"
    assert ref["files"]["model.pt"]["md5"] == newest.tags["model.md5"]
    # stored once: MLflow's artifact store holds no weights, only references and reports
    stored = [p for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()]
    assert not [p for p in stored if p.suffix in (".pt", ".pth")]
    assert max(p.stat().st_size for p in stored) < weights.stat().st_size
    # MLflow 3 opens the experiment on its training runs, not on an empty traces page
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parents[0].info.run_name == "dvc repro @ unknown (test-p)"  # tmp_path: no git
    # a data stage gets its child run too, with the same param keys as a training run
    argv = ["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path), "split"]
    assert main(argv) == 0
    children = _children(client, exp.experiment_id)
    split_keys = set(children["split"].data.params)
    assert split_keys | {"condition", "fold", "seed"} == set(
        children["train base fold=0 seed=0"].data.params
    )
    assert {"finetune.base_model", "generate.mode", "ingest.source"} <= split_keys
    # metrics.json says which fold and which split file: compare refuses mixed assignments
    metrics = json.loads((out.train_report("dct", 0) / "metrics.json").read_text())
    assert metrics["fold"] == 0 and metrics["split_sha256"] == run.data.tags["data.split.sha256"]
    assert (out.classifier("base", 0) / "model.pt").is_file()


def test_unreachable_server_fails_before_training(tmp_path, capsys):
    make_dataset(tmp_path, dct=False, synthetic=False)
    uri = f"http://127.0.0.1:{free_port()}"
    _write_params(tmp_path, uri)
    t0 = time.monotonic()
    assert _train(tmp_path, "base", 0) == 2
    assert time.monotonic() - t0 < 15
    err = capsys.readouterr().err
    assert uri in err and "unreachable" in err and "Traceback" not in err
    assert not (tmp_path / "work").exists() and not (tmp_path / "models").exists()


def test_env_uri_wins(tmp_path, monkeypatch):
    cfg = MlflowConfig(tracking_uri="sqlite:///params.db")
    assert tracking.tracking_uri(cfg, tmp_path) == "sqlite:///params.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.tracking_uri(cfg, tmp_path) == "http://127.0.0.1:1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri(MlflowConfig(), tmp_path).endswith(f"{tmp_path}/mlflow.db")


@pytest.mark.slow
def test_real_mlflow_server_over_http(tmp_path):
    with running_mlflow_server(tmp_path / "store") as server:
        make_dataset(tmp_path, dct=False, synthetic=False)
        _write_params(tmp_path, server.uri)
        assert _train(tmp_path, "base", 1) == 0
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("t")
        run = _children(client, exp.experiment_id)["train base fold=0 seed=1"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"confusion_matrix.png", "metrics.json", "history.csv"} <= arts
        local = client.download_artifacts(run.info.run_id, "history.csv", str(tmp_path))
        with open(local) as f:
            assert f.readline().startswith("epoch,train_loss")
        assert any(server.artifacts.rglob("confusion_matrix.png"))
        # the server accepts the registry version whose source is the reference model
        (version,) = client.search_model_versions("name = 'lymphaug-classifier-base'")
        assert version.tags["seed"] == "1" and version.source.startswith("models:/m-")


def test_http_retries_are_bounded_unless_the_user_set_them(monkeypatch, tmp_path):
    """MLflow's defaults (7 retries, 120 s each) hung a run ~8 minutes on a dead server."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    with pytest.raises(tracking.TrackingError):  # nothing listens there; setup bounds first
        tracking.setup(MlflowConfig(tracking_uri=f"http://127.0.0.1:{free_port()}"), tmp_path)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"  # the user's value stays
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"


def test_a_failed_stage_fails_the_parent_until_its_rerun_finishes(tmp_path):
    """The parent's status and end follow the child that ended last (about 2 s)."""
    params = _write_params(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def parent():
        exp = client.get_experiment_by_name("t")
        found = client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'parent'"
        )
        assert len(found) == 1
        return found[0].info

    with pytest.raises(RuntimeError), tracking.stage_run(params, tmp_path, "split"):
        raise RuntimeError("the stage broke")
    failed = parent()
    assert failed.status == "FAILED"
    with tracking.stage_run(params, tmp_path, "split") as run_id:
        pass
    done, child = parent(), client.get_run(run_id).info
    assert done.status == "FINISHED" and child.status == "FINISHED"
    assert done.end_time >= child.end_time >= failed.end_time
