"""The registry's classifier versions against a real SQLite store, their references against a
real DVC cache (about 6 s together)."""

from __future__ import annotations

import subprocess
import sys

import mlflow
from mlflow.tracking import MlflowClient

from lymphaug.common import registry


def _model_dir(root, condition: str, seed: int, payload: bytes):
    folder = root / "models" / condition / f"seed_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(payload)
    (folder / "model.json").write_text('{"arch": "lymphaug_cnn"}\n')
    return folder


def test_reference_names_the_file_dvc_caches(tmp_path):
    folder = _model_dir(tmp_path, "dct", 1, b"weights" * 1000)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "add", "-q", "models/dct/seed_1"], cwd=tmp_path, check=True)
    ref = registry.reference(folder, tmp_path, "abc1234")
    assert ref["folder"] == "models/dct/seed_1" and sorted(ref["files"]) == [
        "model.json",
        "model.pt",
    ]
    for name, entry in ref["files"].items():  # where DVC really put each: the md5 is its key
        cached = tmp_path / entry["dvc_cache"]
        assert cached.read_bytes() == (folder / name).read_bytes()
        assert entry["bytes"] == cached.stat().st_size


def test_best_alias_goes_to_the_best_seeds_newest_version(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)  # as tracking.setup does: the registry resolves models:/ there
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())

    def train(seed: int, payload: bytes):
        run = client.create_run(exp).info.run_id
        folder = _model_dir(tmp_path, "dct", seed, payload)
        ref = registry.reference(folder, tmp_path, "abc1234")
        model_id = registry.log_reference_model(
            client, experiment_id=exp, run_id=run, name=f"m{seed}", model_dir=folder, ref=ref
        )
        registry.register_version(
            client, condition="dct", model_id=model_id, run_id=run, ref=ref, tags={}
        )
        return registry.weights_md5(ref)

    md5s = {seed: train(seed, bytes([seed]) * 10) for seed in (0, 1, 2)}
    md5s[1] = train(1, bytes([1]) * 10)  # seed 1 again, the same weights: version 4
    # seeds 1 and 2 tie: the lower seed wins, so the alias does not depend on dict order
    best = registry.mark_best(client, condition="dct", scores={0: 0.5, 1: 0.7, 2: 0.7}, md5s=md5s)
    assert str(best.version) == "4"
    alias = client.get_model_version_by_alias("lymphaug-classifier-dct", "best")
    assert str(alias.version) == "4" and alias.tags["model.md5"] == md5s[1]
    # weights the registry never saw (another store): the alias stays where it was
    other = {0: md5s[0], 1: "0" * 32}
    assert registry.mark_best(client, condition="dct", scores={0: 0.1, 1: 0.9}, md5s=other) is None
    assert str(client.get_model_version_by_alias("lymphaug-classifier-dct", "best").version) == "4"
