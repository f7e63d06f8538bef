"""constraints.txt, the lock: complete, within pyproject's ranges, used by every install.

Why: pyproject.toml's ranges let each fresh install resolve different versions, and a
different pillow or numpy once changed the sample set's bytes. The lock pins every package;
these tests keep it complete and in use, and tell when this environment drifted from it.
"""

from __future__ import annotations

import re
from importlib import metadata

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def locked(repo_root) -> dict[str, str]:
    pins = {}
    for line in (repo_root / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_dependency_is_pinned_within_its_range(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = locked(repo_root)
    specs = project["dependencies"] + [
        s for group in project["optional-dependencies"].values() for s in group
    ]
    for spec in specs:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt has no pin for {spec}: run bash .ci/lock"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {spec}"
        )


def test_every_install_uses_the_lock(repo_root):
    """README's commands, CI and both image stages: every pip install takes -c constraints.txt."""
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    quick = re.findall(r"```bash\n(.*?)\n```", readme, re.S)[:2]
    assert len(quick) == 2 and all("\n" not in block for block in quick)  # two one-line commands
    for path, text in [
        ("README.md", "\n".join(quick)),
        (".ci/run", (repo_root / ".ci" / "run").read_text(encoding="utf-8")),
        ("docker/Dockerfile", (repo_root / "docker" / "Dockerfile").read_text(encoding="utf-8")),
    ]:
        commands = [c for c in re.split(r"&&|\n", text) if re.search(r"\bpip install\b", c)]
        assert commands, path
        for command in commands:
            if "--no-deps" in command:  # the project itself, after its locked dependencies
                continue
            assert re.search(r"-c \S*constraints\.txt", command), f"{path}: {command.strip()}"


def test_this_environment_matches_the_lock(repo_root):
    """Every locked package that is installed here has the locked version (drift check).

    A local build label is the same release (torch 2.14.1+cpu, +cu130).
    """
    pins = locked(repo_root)
    drifted = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        mine = name in pins and name not in ("pip", "setuptools", "lymphaug")
        if mine and Version(dist.version).public != Version(pins[name]).public:
            drifted.append(f"{name} {dist.version} (lock: {pins[name]})")
    if drifted:
        pytest.fail(
            "installed versions differ from constraints.txt, so outputs may differ from "
            "dvc.lock: " + ", ".join(sorted(drifted)) + "; reinstall with -c constraints.txt"
        )
