"""Static checks of the container files: docker/Dockerfile, docker/compose.yaml, .env.example.

Docker cannot run here, so these tests read the files the way Docker would and fail when
they drift from pyproject.toml (the one source of truth for pins), from torch's CUDA
version, from .dvc/config's bucket, or from the security rules (loopback-only ports, no
root, no literal credentials).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"

LONG_RUNNING = {"mlflow", "postgres", "minio"}
ONE_SHOT = {"pipeline", "minio-init"}
# Services that keep state (or need the repository) must mount it; mlflow is stateless by
# design (runs in postgres, artifacts in minio).
NEEDS_VOLUME = {"pipeline": "/workspace", "postgres": None, "minio": "/data", "minio-init": None}


def _load_helper():
    spec = importlib.util.spec_from_file_location(
        "pyproject_requirements", DOCKER / "pyproject_requirements.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reqs = _load_helper()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# --- Dockerfile parsing ------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_stages(text: str) -> tuple[dict[str, str], list[dict]]:
    """Global ARG defaults, and per stage: name, base image (ARGs resolved), instructions."""
    args: dict[str, str] = {}
    stages: list[dict] = []
    for word, rest in dockerfile_instructions(text):
        if word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif word == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"name": name, "image": image, "body": []})
        elif stages:
            stages[-1]["body"].append((word, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> dict[str, dict]:
    _, parsed = dockerfile_stages(DOCKERFILE.read_text())
    return {s["name"]: s for s in parsed}


def stage_env(stage: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage["body"]:
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    return env


def with_defaults(value: str) -> str:
    """Compose interpolation with every variable at its default: ${X:-d} / ${X-d} -> d."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", str(value))


def assert_pinned(image: str) -> None:
    name, sep, tag = image.rpartition(":")
    assert sep and "/" not in tag, f"{image}: no tag (would float to :latest)"
    # a release (17.6, 13.0.2) or a dated release (RELEASE.2025-09-07T16-13-09Z)
    pinned = re.search(r"\d+\.\d+|\d{4}-\d{2}-\d{2}", tag)
    assert tag != "latest" and pinned, f"{image}: tag {tag!r} is not pinned"


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_stages_and_pinned_bases(stages):
    assert list(stages) == ["builder", "mlflow-server", "runtime"]  # runtime = default target
    for stage in stages.values():
        assert_pinned(stage["image"])


def test_cuda_base_matches_torch_build(stages, pyproject):
    """The CUDA of the base image is the CUDA that torch's PyPI wheels were built for."""
    torch = pytest.importorskip("torch")
    pins = {reqs.requirement_name(d): d for d in pyproject["project"]["dependencies"]}
    assert pins["torch"] == f"torch=={torch.__version__.split('+')[0]}", "venv torch != pin"
    if torch.version.cuda is None:
        pytest.skip("this torch build has no CUDA: cannot compare")
    base = stages["runtime"]["image"]
    assert base == stages["builder"]["image"], "builder and runtime must share the base"
    match = re.fullmatch(
        r"nvidia/cuda:(\d+\.\d+)\.\d+-(base|runtime|cudnn-runtime)-ubuntu\S+", base
    )
    assert match, f"{base}: expected a pinned nvidia/cuda runtime image"
    assert match.group(1) == torch.version.cuda


def test_final_stages_run_as_non_root(stages):
    for name in ("runtime", "mlflow-server"):
        users = [rest for word, rest in stages[name]["body"] if word == "USER"]
        assert users, f"stage {name} has no USER: it would run as root"
        assert users[-1].split(":")[0] not in ("root", "0"), f"stage {name} runs as root"


def test_mlflow_image_listens_on_loopback_by_default(stages):
    """Only compose, which publishes the port on 127.0.0.1, may widen the listen address."""
    cmds = [rest for word, rest in stages["mlflow-server"]["body"] if word == "CMD"]
    assert cmds and "127.0.0.1" in cmds[-1] and "0.0.0.0" not in cmds[-1]


def test_runtime_stage_environment(stages):
    body = stages["runtime"]["body"]
    env = stage_env(stages["runtime"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]
    assert env["PIP_NO_CACHE_DIR"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONPATH"] == "/workspace/src"  # the mounted code is the code DVC hashes
    for cache in ("HF_HOME", "TORCH_HOME"):
        assert env[cache].startswith("/cache/"), f"{cache} must live on the /cache volume"
    workdirs = [rest for word, rest in body if word == "WORKDIR"]
    assert workdirs[-1] == "/workspace"


def test_runtime_stage_has_no_build_tools(stages):
    """Multi-stage: compilers stay in the builder; the runtime copies the venv only."""
    body = stages["runtime"]["body"]
    installs = " ".join(rest for word, rest in body if word == "RUN" and "apt-get install" in rest)
    for tool in ("build-essential", "gcc", "g++", "python3-dev", "make"):
        assert not re.search(rf"(^|\s){re.escape(tool)}(\s|$)", installs), tool
    copies = [rest for word, rest in body if word == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    assert "build-essential" in " ".join(rest for _, rest in stages["builder"]["body"])


def pip_install_args(stage: dict) -> list[list[str]]:
    """Arguments of every `pip install` in a stage's RUN instructions."""
    found = []
    for word, rest in stage["body"]:
        if word != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            tokens = command.split()
            if tokens[:2] == ["pip", "install"]:
                found.append(tokens[2:])
    return found


def test_dockerfile_installs_pyproject_pins_only(stages, pyproject):
    """Every requirement the image installs comes from pyproject.toml: a drift fails here."""
    project = pyproject["project"]
    known = {
        reqs.requirement_name(spec): spec
        for spec in project["dependencies"]
        + [s for group in project["optional-dependencies"].values() for s in group]
    }
    pip_calls = {name: pip_install_args(stage) for name, stage in stages.items()}
    assert pip_calls["runtime"] == [], "the runtime stage must not pip install anything"
    for name, calls in pip_calls.items():
        for args in calls:
            for arg in args:
                if arg.startswith("-") or arg in (".", "pip", "requirements.txt"):
                    continue
                if arg.endswith(("requirements.txt", "constraints.txt")):
                    continue
                pkg = reqs.requirement_name(arg.strip("\"'"))
                assert pkg in known, f"{name}: installs {arg}, which pyproject.toml does not list"
                assert arg.strip("\"'") == known[pkg], f"{name}: {arg} != pyproject {known[pkg]}"
    text = DOCKERFILE.read_text()
    # the requirement files are generated from pyproject by the helper, with these groups
    assert "pyproject_requirements.py pyproject.toml --extra s3 > requirements.txt" in text
    assert "--only mlflow --extra server" in text
    assert "pip install --no-deps ." in text


def test_pyproject_requirements_helper(tmp_path, pyproject):
    project = pyproject["project"]
    pyfile = REPO / "pyproject.toml"
    assert (
        reqs.requirements(pyfile, ["s3"])
        == project["dependencies"] + project["optional-dependencies"]["s3"]
    )
    server = reqs.requirements(pyfile, ["server"], only=["mlflow"])
    assert server[0] == next(d for d in project["dependencies"] if d.startswith("mlflow"))
    assert reqs.requirement_name("ruamel.yaml>=0.18,<0.20") == "ruamel-yaml"
    script = DOCKER / "pyproject_requirements.py"
    ok = subprocess.run(
        [sys.executable, script, pyfile, "--extra", "s3"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "torch==2.14.1" in ok.stdout.split("\n")
    bad = subprocess.run(
        [sys.executable, script, pyfile, "--extra", "nosuch"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "nosuch" in bad.stderr


def test_torch_pins_agree_everywhere(pyproject):
    """Install commands outside pyproject (.ci/run, README) must name pyproject's torch pins."""
    pins = {reqs.requirement_name(d): d for d in pyproject["project"]["dependencies"]}
    for path in (REPO / ".ci" / "run", REPO / "README.md", DOCKERFILE):
        if not path.is_file():
            continue
        for pkg, version in re.findall(r"\b(torch|torchvision)==([\w.+]+)", path.read_text()):
            release = version.split("+")[0]  # 2.14.1+cpu: PyTorch's CPU build of 2.14.1
            assert f"{pkg}=={release}" == pins[pkg], f"{path.name}: {pkg}=={version}"


def test_dockerignore_allows_exactly_what_the_build_copies():
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: data, models, .git and .venv stay out of the context"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    _, parsed = dockerfile_stages(DOCKERFILE.read_text())
    for stage in parsed:
        for word, rest in stage["body"]:
            if word != "COPY" or rest.startswith("--from"):
                continue
            for src in rest.split()[:-1]:
                assert src in allowed, f"COPY {src} is excluded by .dockerignore"
                assert (REPO / src).exists(), f"COPY {src}: missing from the repository"


# --- compose -------------------------------------------------------------------------------


def test_compose_services_are_complete(services):
    assert set(services) == LONG_RUNNING | ONE_SHOT
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        if "image" in svc:
            assert_pinned(with_defaults(svc["image"]))
        hc = svc.get("healthcheck")
        assert hc, f"{name}: no healthcheck section"
        if name in LONG_RUNNING:
            assert hc.get("test") and not hc.get("disable"), f"{name}: needs a real healthcheck"
        else:
            assert hc.get("disable") is True, f"{name}: one-shot, health = exit status"
    for name, mount in NEEDS_VOLUME.items():
        volumes = services[name].get("volumes") or []
        assert volumes, f"{name}: no volume"
        if mount:
            targets = [with_defaults(v).split(":")[1] for v in volumes]
            assert mount in targets, f"{name}: {mount} not mounted"
    assert "volumes" not in services["mlflow"], "mlflow is stateless: postgres + minio hold it"
    for name in ("minio", "mlflow", "pipeline"):
        assert services[name].get("command"), f"{name}: no command"
    assert services["minio-init"]["entrypoint"][-1] == "/minio-init.sh"
    assert (DOCKER / "minio-init.sh").is_file()


def test_named_volumes_declared(compose, services):
    declared = set(compose["volumes"])
    used = set()
    for svc in services.values():
        for vol in svc.get("volumes") or []:
            source = with_defaults(vol).split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared
    assert {"postgres-data", "minio-data", "model-cache"} <= declared


def test_dependencies_wait_for_health(services):
    def cond(svc: str, dep: str) -> str:
        return services[svc]["depends_on"][dep]["condition"]

    assert cond("pipeline", "mlflow") == "service_healthy"
    assert cond("pipeline", "minio-init") == "service_completed_successfully"
    assert cond("mlflow", "postgres") == "service_healthy"
    assert cond("mlflow", "minio-init") == "service_completed_successfully"
    assert cond("minio-init", "minio") == "service_healthy"


def test_published_ports_are_loopback_only(services):
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not loopback-bound"
    assert {"postgres", "minio-init", "pipeline"}.isdisjoint(
        n for n, s in services.items() if s.get("ports")
    ), "postgres and the one-shots publish nothing"
    assert any(p.endswith(":5000") for p in services["mlflow"]["ports"])
    assert any(p.endswith(":9000") for p in services["minio"]["ports"])


def test_pipeline_service(services):
    svc = services["pipeline"]
    assert svc["build"]["context"] == ".." and svc["build"]["target"] == "runtime"
    assert svc["build"]["dockerfile"] == "docker/Dockerfile"
    assert "..:/workspace" in svc["volumes"]
    assert svc["working_dir"] == "/workspace"
    env = svc["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", env[key]), f"{key} must come from docker/.env"
    device = svc["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert str(svc["user"]).startswith("${LYMPHAUG_UID")


def test_mlflow_service_uses_postgres_and_s3(services):
    svc = services["mlflow"]
    assert svc["build"]["target"] == "mlflow-server"
    env = svc["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in env["MLFLOW_BACKEND_STORE_URI"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "mlflow" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    command = svc["command"]
    assert "--artifacts-destination=s3://lymphaug-mlflow/artifacts" in command
    assert "--serve-artifacts" in command
    assert not any("postgresql" in c for c in command), "the DB password must not be in argv"


def test_minio_init_creates_the_buckets_dvc_and_mlflow_use(services, repo_root):
    buckets = services["minio-init"]["environment"]["BUCKETS"].split()
    config = (repo_root / ".dvc" / "config").read_text()
    dvc_bucket = re.search(r"url = s3://([^/\s]+)", config).group(1)
    assert dvc_bucket in buckets
    dest = next(c for c in services["mlflow"]["command"] if c.startswith("--artifacts-dest"))
    assert dest.split("s3://")[1].split("/")[0] in buckets
    script = (DOCKER / "minio-init.sh").read_text()
    assert "mc mb --ignore-existing" in script and "mc admin policy attach" in script
    if shutil.which("sh"):
        assert subprocess.run(["sh", "-n", DOCKER / "minio-init.sh"]).returncode == 0


def compose_variables() -> set[str]:
    return set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            out[key.strip()] = value.strip()
    return out


def test_env_example_lists_every_variable():
    example = env_example()
    assert compose_variables() == set(example), (
        f"only in compose: {compose_variables() - set(example)}; "
        f"only in .env.example: {set(example) - compose_variables()}"
    )
    for key, value in example.items():
        if re.search(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER", key):
            assert value.startswith("change-me"), f"{key}: placeholder expected, got {value!r}"


def test_credentials_are_never_literal_in_compose(services):
    secret_key = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER|_KEY$")
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if secret_key.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), (
                    f"{name}.{key}: must be a required ${{VAR:?...}} from docker/.env"
                )
    assert ".env" in (REPO / ".gitignore").read_text().split()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_config_validates_offline(tmp_path):
    """Debian's docker-compose (1.29) validates the file against the compose schema offline.

    It predates the top-level `name:` key, which Compose v2 reads; that line is dropped.
    """
    text = "\n".join(ln for ln in COMPOSE.read_text().splitlines() if not ln.startswith("name:"))
    copy = tmp_path / "compose.yaml"
    copy.write_text(text)
    proc = subprocess.run(
        ["docker-compose", "--project-directory", DOCKER, "--env-file", ENV_EXAMPLE]
        + ["-f", copy, "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    assert resolved["mlflow"]["ports"] == ["127.0.0.1:5000:5000/tcp"]
    assert resolved["pipeline"]["volumes"][0] == f"{REPO}:/workspace:rw"
