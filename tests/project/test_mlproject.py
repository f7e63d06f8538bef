"""The MLflow Project: every stage an entry point whose command the lymphaug CLI accepts,
the docker variant in step with it, and `mlflow run` really running stages (slow)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
import yaml

from lymphaug import cli
from lymphaug.common.paths import Layout

REPO = Path(__file__).resolve().parents[2]
STAGE_ENTRIES = [name for name in cli.STAGES if name != "profile"]  # profile edits params.yaml

load_project = pytest.importorskip("mlflow.projects._project_spec").load_project


@pytest.fixture(scope="module")
def project():
    return load_project(str(REPO))


def test_entry_points_cover_every_stage_and_main(project):
    assert project.env_type == "python_env"
    assert set(project._entry_points) == {"main", *STAGE_ENTRIES}
    assert project.get_entry_point("main").command == "dvc repro"


@pytest.mark.parametrize("stage", STAGE_ENTRIES)
def test_entry_point_commands_parse_with_the_cli(project, stage):
    """Defaults and overrides produce a command line that the real CLI parser accepts."""
    entry = project.get_entry_point(stage)
    user = {"condition": "dct", "seed": "3"} if stage == "train" else {}
    if stage in cli.PER_FOLD:
        user["fold"] = "1"
    argv = shlex.split(entry.compute_command({**user, "params": "other.yaml"}, storage_dir=None))
    assert argv[0] == "lymphaug"
    args = cli.build_parser().parse_args(argv[1:])
    assert args.stage == stage and args.params == "other.yaml"
    if stage in cli.PER_FOLD:
        assert args.fold == 1
    if stage == "train":
        assert (args.condition, args.seed) == ("dct", 3)
        default = shlex.split(entry.compute_command({}, storage_dir=None))
        assert cli.build_parser().parse_args(default[1:]).seed == 0


def test_docker_variant_matches(project):
    docker = load_project(str(REPO / "docker"))
    assert docker.env_type == "docker_env"
    root_yaml = yaml.safe_load((REPO / "MLproject").read_text())
    docker_yaml = yaml.safe_load((REPO / "docker" / "MLproject").read_text())
    assert docker_yaml["entry_points"] == root_yaml["entry_points"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert docker.docker_env["image"] == f"lymphaug:{version}"
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    image = compose["services"]["pipeline"]["image"]
    assert image.replace("${LYMPHAUG_VERSION:-", "").rstrip("}") == f"lymphaug:{version}"


def test_python_env_installs_this_project():
    env = yaml.safe_load((REPO / "python_env.yaml").read_text())
    assert env["dependencies"] == [".[s3]"], "pins come from pyproject.toml, nowhere else"
    assert "pip" in env["build_dependencies"]
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in requires.removeprefix(">=").split("."))
    assert tuple(int(x) for x in env["python"].split(".")[:2]) >= minimum


# --- mlflow run (slow: each run creates a tracking store and starts a process) -----------


def mlflow_run(project_dir: Path, entry: str, *params: str, store: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{store}", DVC_NO_ANALYTICS="1")
    cmd = ["mlflow", "run", str(project_dir), "-e", entry, "--env-manager", "local"]
    for p in params:
        cmd += ["-P", p]
    proc = subprocess.run(cmd, cwd=project_dir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def finished_runs(store: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, filter_string="attributes.status = 'FINISHED'")


def copy_project_files(dest: Path) -> None:
    for name in ("MLproject", "python_env.yaml"):
        shutil.copy(REPO / name, dest / name)


@pytest.mark.slow
def test_mlflow_run_stage_entry_points(tmp_path):
    """`mlflow run . -e ingest` then `-e split` with a tiny params file, in a temp copy."""
    if shutil.which("mlflow") is None or shutil.which("lymphaug") is None:
        pytest.skip("mlflow and lymphaug CLIs needed")
    for stage in ("ingest", "split"):
        if not (REPO / "src" / "lymphaug" / f"{stage}.py").is_file():
            pytest.skip(f"the {stage} stage is not in this checkout yet")
    proj = tmp_path / "project"
    proj.mkdir()
    copy_project_files(proj)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"]["source"] = "sample"
    params["ingest"]["sample"].update(per_class=4, width=64, height=48)
    (proj / "tiny.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    store = tmp_path / "mlflow.db"

    out = mlflow_run(proj, "ingest", "params=tiny.yaml", store=store)
    assert "lymphaug --params tiny.yaml ingest" in out
    assert len(list((proj / "data" / "raw").rglob("*.png"))) == 12
    mlflow_run(proj, "split", "params=tiny.yaml", store=store)
    assert Layout(proj).split_csv.is_file()
    runs = finished_runs(store)
    entry_points = {r.data.tags.get("mlflow.project.entryPoint") for r in runs}
    assert {"ingest", "split"} <= entry_points
    # the entry-point runs carry the params file; the stages' own child runs log params.yaml
    project_runs = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint")]
    assert len(project_runs) == 2
    assert all(r.data.params.get("params") == "tiny.yaml" for r in project_runs)


@pytest.mark.slow
def test_mlflow_run_main_is_dvc_repro(tmp_path):
    """`-e main` runs the DVC pipeline of the project it is given."""
    if shutil.which("mlflow") is None or shutil.which("dvc") is None:
        pytest.skip("mlflow and dvc CLIs needed")
    proj = tmp_path / "project"
    proj.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True, env=env)
    subprocess.run(["dvc", "init", "-q"], cwd=proj, check=True, env=env)
    copy_project_files(proj)
    stage = {"cmd": "python -c \"open('out.txt','w').write('made')\"", "outs": ["out.txt"]}
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": stage}}))
    store = tmp_path / "mlflow.db"
    out = mlflow_run(proj, "main", store=store)
    assert "Running stage 'make'" in out
    assert (proj / "out.txt").read_text() == "made"
    assert (proj / "dvc.lock").is_file()
    assert [r.data.tags.get("mlflow.project.entryPoint") for r in finished_runs(store)] == ["main"]
