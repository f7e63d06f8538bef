"""DVC remotes for real: push, fresh clone, pull, byte-identical, nothing to recompute.

Every test works in a throwaway git + DVC repository that uses the repository's committed
.dvc/config unchanged, so the default `local` remote (../lymphaug-dvc-storage, beside the
checkout) and the `s3` remote (endpoint from AWS_ENDPOINT_URL) are the ones a team member
gets. S3 is moto's standalone server on 127.0.0.1: the real HTTP S3 API through dvc-s3.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not installed")

GIT_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "lymphaug tests",
    "GIT_AUTHOR_EMAIL": "tests@lymphaug.invalid",
    "GIT_COMMITTER_NAME": "lymphaug tests",
    "GIT_COMMITTER_EMAIL": "tests@lymphaug.invalid",
}
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_MAX_ATTEMPTS": "1",  # fail fast when the endpoint is down
}


def run(cwd: Path, *cmd: str, env: dict | None = None, check: bool = True):
    full_env = {**os.environ, **GIT_ENV, **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def hashes(root: Path, *outs: str) -> dict[str, str]:
    """sha256 of every file under the given outputs, keyed by path relative to root."""
    found = {}
    for out in outs:
        base = root / out
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MAKE_DATA = """\
import pathlib, random, yaml
n = yaml.safe_load(open("params.yaml"))["make"]["n"]
rng = random.Random(0)
out = pathlib.Path("data/out")
for i in range(n):
    (out / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
    (out / f"c{i % 3}" / f"{i}.bin").write_bytes(rng.randbytes(2048 + i))
pathlib.Path("data/summary.txt").write_text(f"{n} files\\n")
"""


@pytest.fixture
def tiny_repo(tmp_path, repo_root) -> Path:
    """A git + DVC repo with the committed .dvc/config and one cheap stage."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    shutil.copy(repo_root / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / "make_data.py").write_text(MAKE_DATA)
    (repo / "params.yaml").write_text("make:\n  n: 7\n")
    stage = {
        "cmd": "python make_data.py",
        "deps": ["make_data.py"],
        "params": ["make"],
        "outs": ["data/out", "data/summary.txt"],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": stage}}))
    run(repo, "dvc", "repro", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "data")
    return repo


def clone_and_pull(repo: Path, dest: Path, *pull_args: str, env: dict | None = None) -> Path:
    run(repo.parent, "git", "clone", "-q", str(repo), str(dest))
    in_git = [p.name for p in (dest / "data").rglob("*") if p.is_file()]
    assert set(in_git) <= {".gitignore"}, "data must come from the remote, not from git"
    run(dest, "dvc", "pull", *pull_args, env=env)
    return dest


def assert_clean_and_nothing_to_do(clone: Path, env: dict | None = None) -> None:
    status = run(clone, "dvc", "status", env=env).stdout
    assert "up to date" in status, status
    before = hashes(clone, "data")
    repro = run(clone, "dvc", "repro", env=env).stdout
    assert "Running stage" not in repro and "up to date" in repro, repro
    assert hashes(clone, "data") == before


# --- the committed configuration ------------------------------------------------------


def test_committed_remotes(repo_root):
    listed = run(repo_root, "dvc", "remote", "list").stdout
    remotes = {line.split()[0]: line.split()[1:] for line in listed.splitlines() if line.strip()}
    assert "(default)" in remotes["local"]
    local = Path(remotes["local"][0])
    assert local == repo_root.parent.resolve() / "lymphaug-dvc-storage"
    assert not local.is_relative_to(repo_root.resolve()), "outside the checkout: clones share it"
    assert remotes["s3"][0] == "s3://lymphaug-dvc/dvc"
    config = (repo_root / ".dvc" / "config").read_text()
    for key in ("access_key_id", "secret_access_key", "session_token", "password", "endpointurl"):
        assert f"{key} =" not in config, f".dvc/config must not set {key}: use the environment"


# --- local remote (default suite) -----------------------------------------------------------


def test_local_remote_round_trip(tiny_repo, tmp_path):
    repo = tiny_repo
    original = hashes(repo, "data/out", "data/summary.txt")
    assert len(original) == 8
    run(repo, "dvc", "push")  # the default remote of the committed config
    storage = tmp_path / "lymphaug-dvc-storage"
    assert storage.is_dir() and any(storage.rglob("*")), "default remote is beside the repo"

    clone = clone_and_pull(repo, tmp_path / "clone")
    assert hashes(clone, "data/out", "data/summary.txt") == original
    assert_clean_and_nothing_to_do(clone)
    cloud = run(clone, "dvc", "status", "--cloud").stdout
    assert "in sync" in cloud, cloud


# --- S3 over HTTP (moto's standalone server) ------------------------------------------------


@pytest.fixture
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, **_boto_kwargs())
        client.create_bucket(Bucket="lymphaug-dvc")
        yield endpoint, client
    finally:
        server.stop()


def _boto_kwargs() -> dict:
    return {
        "region_name": FAKE_AWS["AWS_DEFAULT_REGION"],
        "aws_access_key_id": FAKE_AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.mark.slow  # about 10 s on 2 shared cores
def test_s3_remote_round_trip(tiny_repo, tmp_path, s3_endpoint):
    pytest.importorskip("dvc_s3")
    endpoint, client = s3_endpoint
    env = {**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint}
    repo = tiny_repo
    original = hashes(repo, "data/out", "data/summary.txt")
    run(repo, "dvc", "push", "-r", "s3", env=env)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="lymphaug-dvc")["Contents"]]
    assert keys and all(k.startswith("dvc/files/md5/") for k in keys)

    clone = clone_and_pull(repo, tmp_path / "clone", "-r", "s3", env=env)
    assert hashes(clone, "data/out", "data/summary.txt") == original
    assert_clean_and_nothing_to_do(clone, env=env)
    cloud = run(clone, "dvc", "status", "--cloud", "-r", "s3", env=env).stdout
    assert "in sync" in cloud, cloud


def test_unreachable_s3_endpoint_is_named_quickly(tiny_repo):
    pytest.importorskip("dvc_s3")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    proc = run(
        tiny_repo,
        "dvc",
        "push",
        "-r",
        "s3",
        env={**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint},
        check=False,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert endpoint in proc.stderr and "lymphaug-dvc" in proc.stderr, proc.stderr
    assert elapsed < 30, f"took {elapsed:.0f} s to report an unreachable endpoint"


# --- the real data stages (slow) --------------------------------------------------------------


@pytest.mark.slow
def test_data_stages_round_trip(tmp_path, repo_root):
    """ingest -> split -> dct on a tiny sample, pushed and pulled into a fresh clone."""
    for stage in ("ingest", "split", "dct"):
        if not (repo_root / "src" / "lymphaug" / f"{stage}.py").is_file():
            pytest.skip(f"the {stage} stage is not in this checkout yet")
    if shutil.which("lymphaug") is None:
        pytest.skip("the lymphaug CLI is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(repo_root / name, repo / name)
    shutil.copytree(
        repo_root / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["source"] = "sample"
    params["ingest"]["sample"].update(per_class=4, width=64, height=48)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    shutil.copy(repo_root / ".dvc" / "config", repo / ".dvc" / "config")
    run(repo, "dvc", "repro", "dct")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "data stages")
    outs = ("data/raw", "data/splits", "data/dct")
    original = hashes(repo, *outs)
    assert len(original) > 12
    run(repo, "dvc", "push")

    clone = clone_and_pull(repo, tmp_path / "clone", "dct", "--with-deps")
    assert hashes(clone, *outs) == original
    status = run(clone, "dvc", "status", "dct", "--with-deps").stdout
    assert "up to date" in status, status
    repro = run(clone, "dvc", "repro", "dct").stdout
    assert "Running stage" not in repro, repro
    assert hashes(clone, *outs) == original


# --- preflight check: lymphaug.remotes names the remote before a long push or pull -----------


def test_check_names_an_absent_local_remote(tiny_repo, tmp_path):
    from lymphaug.remotes import RemoteError, check

    storage = tmp_path / "lymphaug-dvc-storage"
    with pytest.raises(RemoteError, match=f"remote 'local' \\({storage}\\) does not exist"):
        check(tiny_repo)
    run(tiny_repo, "dvc", "push")
    assert check(tiny_repo) == f"DVC remote 'local' ({storage}): ok"
    with pytest.raises(RemoteError, match="no DVC remote named 'nosuch'"):
        check(tiny_repo, "nosuch")


def test_check_s3_remote(tiny_repo, s3_endpoint, monkeypatch):
    pytest.importorskip("botocore")
    from lymphaug.remotes import RemoteError, check, main

    endpoint, _ = s3_endpoint
    for key, value in FAKE_AWS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert "bucket 'lymphaug-dvc' reachable" in check(tiny_repo, "s3")
    assert main(["--root", str(tiny_repo), "s3"]) == 0

    run(tiny_repo, "dvc", "remote", "modify", "--local", "s3", "url", "s3://no-such-bucket/dvc")
    with pytest.raises(RemoteError, match="bucket 'no-such-bucket' does not exist"):
        check(tiny_repo, "s3")
    (tiny_repo / ".dvc" / "config.local").unlink()

    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    start = time.monotonic()
    with pytest.raises(RemoteError, match=f"remote 's3' \\(s3://lymphaug-dvc/dvc\\) at {closed}"):
        check(tiny_repo, "s3", timeout=2)
    assert time.monotonic() - start < 5
    assert main(["--root", str(tiny_repo), "s3", "--timeout", "2"]) == 2

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tiny_repo / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tiny_repo / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(RemoteError, match="no credentials"):
        check(tiny_repo, "s3")
