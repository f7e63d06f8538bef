"""No credential is ever committed: every file git would take is scanned for secret-looking
values (cloud keys, private keys, tokens, passwords other than obvious placeholders).

Credentials come from the environment or the git-ignored docker/.env only. The scanner is
checked against planted secrets first, so a silent regex cannot make this test pass.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TOKEN_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "Slack token": re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}"),
}
# KEY = value / KEY: value, where KEY ends like a credential name (not ${KEY:?...}).
ASSIGNMENT = re.compile(
    r"(?i)(?<![{$\w])([\w.-]*?(?:password|passwd|secret|secret_key|secret_access_key|access_key_id"
    r"|access_key|api_key|access_token|auth_token|private_key))\b[\"']?\s*[:=]\s*"
    r"(?P<quote>[\"']?)(?P<value>[^\s\"',}#]*)"
)
# scheme://user:<password>@host
URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[\w.%+-]+:(?P<value>[^@\s/\[\]()]+)@")
PLACEHOLDER = re.compile(
    r"(?i)^$|change-?me|placeholder|example|dummy|testing|^test|xxx|redacted|your[-_]|"
    r"^<.*>$|\$|^\*+$|^none$|^null$|^false$|^true$"
)
CONFIG_SUFFIXES = {".yaml", ".yml", ".toml", ".ini", ".cfg", ".env", ".sh", ".md", ".txt", ".json"}
CONFIG_NAMES = {"Dockerfile", "MLproject", "config", ".env.example", "run"}


def repo_files() -> list[Path]:
    """What git would take: tracked files plus untracked ones that are not ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    return [REPO / name for name in out.decode().split("\0") if name]


def is_config(path: Path) -> bool:
    return path.suffix in CONFIG_SUFFIXES or path.name in CONFIG_NAMES


def findings(path: Path, text: str) -> list[str]:
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{path.name}:{lineno}"
        for label, pattern in TOKEN_PATTERNS.items():
            if pattern.search(line):
                found.append(f"{where}: {label}")
        for match in ASSIGNMENT.finditer(line):
            value = match.group("value")
            # In code only quoted literals are values (password=args.password is a reference).
            literal = bool(match.group("quote")) or is_config(path)
            if literal and value and not PLACEHOLDER.search(value):
                found.append(f"{where}: {match.group(1)} has a non-placeholder value")
        for match in URL_PASSWORD.finditer(line):
            if not PLACEHOLDER.search(match.group("value")):
                found.append(f"{where}: password inside a URL")
    return found


def scan(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary (PNG, ...)
        found += findings(path, data.decode("utf-8", errors="replace"))
    return found


def test_scanner_catches_planted_secrets(tmp_path):
    """Built at run time so that this file itself contains no secret-looking literal."""
    planted = {
        "a.env": "AWS_ACCESS_KEY_ID=" + "AKIA" + "Q" * 16,
        "b.pem": "-----BEGIN " + "RSA PRIVATE KEY-----",
        "c.yaml": "db:\n  password: " + "hunter2-" + "s3cr3t",
        "d.py": "client = connect(api_key='" + "sk" + "9f8e7d6c5b4a" + "')",
        "e.toml": 'uri = "postgresql://mlflow:' + "Sup3r" + 'Secret@db:5432/mlflow"',
        "f.sh": "export GH=" + "ghp_" + "a1B2" * 9,
        "g.env": "MINIO_ROOT_PASSWORD=" + "r3al-" + "passw0rd",
    }
    for name, text in planted.items():
        (tmp_path / name).write_text(text + "\n")
    found = scan(sorted(tmp_path.iterdir()))
    assert {f.split(":")[0] for f in found} == set(planted), found

    harmless = {
        "ok.env": "MINIO_ROOT_PASSWORD=change-me-minio-root-password\nAWS_SECRET_ACCESS_KEY=\n",
        "ok.yaml": "password: ${POSTGRES_PASSWORD:?set it}\nuri: postgresql://u:${PW}@db/x\n",
        "ok.py": "password = os.environ['PW']\nsecret = cfg.secret\nkey = 'testing'\n",
    }
    for name, text in harmless.items():
        (tmp_path / name).write_text(text)
    assert scan([tmp_path / n for n in harmless]) == []


def test_repository_contains_no_secrets():
    files = repo_files()
    assert any(p.name == ".env.example" for p in files), "the env example is scanned too"
    assert scan(files) == []


@pytest.mark.parametrize("path", ["docker/.env", ".env", ".dvc/config.local"])
def test_credential_files_are_git_ignored(path):
    proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
    assert proc.returncode == 0, f"{path} must be git-ignored: it holds real credentials"
