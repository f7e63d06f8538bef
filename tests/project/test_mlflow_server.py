"""A real MLflow tracking server on 127.0.0.1, used over HTTP through lymphaug.common.tracking.

The server is the `mlflow server` CLI (SQLite backend store, a local artifact destination
served through the server's artifact proxy, as in the compose stack where it is S3).
Start-up takes several seconds, so those tests are slow; the unreachable-server checks run
in the default suite.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.mlflow_server import free_port
from fixtures.mlflow_server import mlflow_server as running_mlflow_server

from lymphaug.common import tracking
from lymphaug.common.config import MlflowConfig

# --- unreachable server (default suite) ------------------------------------------------------


def test_unreachable_server_is_named_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=f"{uri}.*unreachable"):
        tracking.check_reachable(uri)
    with pytest.raises(tracking.TrackingError, match=uri):
        tracking.setup(MlflowConfig(tracking_uri=uri, experiment="x"), tmp_path)
    assert time.monotonic() - start < 5
    assert not (tmp_path / "mlflow.db").exists(), "no fallback store behind the user's back"


def test_environment_uri_wins_and_is_checked(tmp_path, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = MlflowConfig(tracking_uri=None, experiment="x")
    assert tracking.tracking_uri(cfg, tmp_path) == uri
    with pytest.raises(tracking.TrackingError, match=uri):
        tracking.setup(cfg, tmp_path)


# --- live server (slow) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1:<free port>; yields (uri, artifact directory, pid)."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server.uri, server.artifacts, server.pid


def non_loopback_ipv4() -> str | None:
    """An address of this machine other than 127.x (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            addr = sock.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


@pytest.mark.slow
def test_server_listens_on_loopback_only(mlflow_server):
    uri, _, _ = mlflow_server
    port = int(uri.rsplit(":", 1)[1])
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to probe")
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex((addr, port)) != 0, f"server reachable on {addr}:{port}"


@pytest.mark.slow
def test_runs_metrics_and_artifacts_over_http(mlflow_server, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri, artifact_dir, _ = mlflow_server
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("LYMPHAUG_PIPELINE_ID", "server-test")
    cfg = MlflowConfig(tracking_uri=uri, experiment="lymphaug-server-test")

    client, exp_id = tracking.setup(cfg, tmp_path)
    key = tracking.pipeline_key(tmp_path)
    parent = tracking.parent_run_id(client, exp_id, key)
    assert tracking.parent_run_id(client, exp_id, key) == parent, "one parent per pipeline key"

    report = tmp_path / "metrics.json"
    report.write_text('{"accuracy": 0.75}\n')

    def one_run() -> str:
        child = tracking.fresh_child_run_id(client, exp_id, parent, "train base seed=0")
        with mlflow.start_run(run_id=child):
            mlflow.log_params({"condition": "base", "seed": 0})
            for epoch in range(3):
                mlflow.log_metrics(
                    {"train_loss": 1.0 / (epoch + 1), "val_accuracy": 0.5 + 0.1 * epoch},
                    step=epoch,
                )
            mlflow.log_artifact(str(report), artifact_path="reports")
        return child

    first = one_run()
    child = one_run()  # a rerun replaces the earlier child of the same name

    reader = MlflowClient(uri)  # a fresh client: everything below came back over HTTP
    run = reader.get_run(child)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.PARENT_TAG] == parent
    assert run.data.params == {"condition": "base", "seed": "0"}
    history = reader.get_metric_history(child, "val_accuracy")
    assert [m.step for m in history] == [0, 1, 2]
    assert [round(m.value, 6) for m in history] == [0.5, 0.6, 0.7]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "proxied by the server"
    assert [a.path for a in reader.list_artifacts(child, "reports")] == ["reports/metrics.json"]
    local = Path(reader.download_artifacts(child, "reports/metrics.json", str(tmp_path / "dl")))
    assert local.read_bytes() == report.read_bytes()
    assert list(artifact_dir.rglob("metrics.json")), "stored in the server's artifact destination"

    children = reader.search_runs(
        [exp_id], filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent}'"
    )
    assert [r.info.run_id for r in children] == [child]
    assert reader.get_run(first).info.lifecycle_stage == "deleted"


@pytest.mark.slow
def test_server_killed_mid_training_is_one_message_and_a_rerun_resumes(tmp_path):
    """The probe's case: a run hung ~8 minutes in retries, then a 230-line traceback."""
    import yaml
    from fixtures.classifier_data import make_dataset, tiny_params
    from fixtures.processes import env_with_src
    from mlflow.tracking import MlflowClient

    store, repo, port = tmp_path / "store", tmp_path / "repo", free_port()
    make_dataset(repo, dct=False, synthetic=False)
    uri = f"http://127.0.0.1:{port}"
    params = tiny_params(repo, arch="mobilenet_v3_small", epochs=6, freeze_backbone=True)
    params = params.model_dump()
    params["mlflow"] = {"tracking_uri": uri, "experiment": "killed"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    train = [sys.executable, "-m", "lymphaug.cli", "train", "--condition", "base", "--seed", "0"]
    env = {**env_with_src(), "LYMPHAUG_PIPELINE_ID": "killed-server"}
    env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}  # the project's bounds
    with running_mlflow_server(store, port=port) as server:
        proc = subprocess.Popen(
            train, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 300
        while not list((repo / "work" / "train").rglob("checkpoint.pt")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint in 300 s"
            time.sleep(0.1)
        os.killpg(server.pid, signal.SIGKILL)  # the server dies; its store stays
        killed = time.monotonic()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert time.monotonic() - killed < 60, "bounded retries: seconds, not minutes"
    lines = [line for line in err.splitlines() if line.startswith("lymphaug train:")]
    assert "Traceback" not in err and len(lines) == 1, err
    (ckpt,) = (repo / "work" / "train").rglob("checkpoint.pt")
    assert lines[0].startswith(
        f"lymphaug train: error: MLflow tracking server {uri} stopped "
        "answering while logging epoch "
    )
    assert f"the checkpoint {ckpt.relative_to(repo)} is kept: rerun the same command" in lines[0]
    done = torch_epoch(ckpt)
    # the server is back (same store, same port): a rerun resumes from the checkpoint
    with running_mlflow_server(store, port=port):
        out = subprocess.run(train, cwd=repo, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("killed")
        runs = client.search_runs(
            [exp.experiment_id], "attributes.run_name = 'train base fold=0 seed=0'"
        )
    assert [r.info.status for r in runs] == ["FINISHED"]  # the killed run's child was replaced
    assert f"train base fold=0 seed=0: resumed from epoch {done}, " in out.stdout
    assert not ckpt.exists() and (repo / "models/base/fold_0/seed_0/model.pt").is_file()


def torch_epoch(checkpoint: Path) -> int:
    import torch

    return int(torch.load(checkpoint, weights_only=True)["epoch"])
