"""Print pip requirement lines taken verbatim from pyproject.toml.

Why: pyproject.toml is the one source of truth for dependency pins. The image
installs the dependencies in their own cached layer (before the source is copied)
so a code change does not reinstall torch; this script is how that layer gets the
exact specifiers without a second, drifting requirements file.
tests/project/test_containers.py imports it to check the Dockerfile against pyproject.

    python pyproject_requirements.py pyproject.toml --extra s3
    python pyproject_requirements.py pyproject.toml --only mlflow --extra server
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(spec: str) -> str:
    """Normalised project name of a requirement string ("ruamel.yaml>=0.18" -> "ruamel-yaml")."""
    match = _NAME.match(spec)
    if not match:
        raise ValueError(f"not a requirement: {spec!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(
    pyproject: Path, extras: list[str] | None = None, only: list[str] | None = None
) -> list[str]:
    """The [project] dependencies (all, or those named in ``only``) plus the given extras."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    deps: list[str] = list(project["dependencies"])
    if only is not None:
        wanted = {requirement_name(n) for n in only}
        deps = [d for d in deps if requirement_name(d) in wanted]
        missing = wanted - {requirement_name(d) for d in deps}
        if missing:
            raise KeyError(f"{pyproject}: no dependency named {sorted(missing)}")
    optional = project.get("optional-dependencies", {})
    for extra in extras or []:
        if extra not in optional:
            raise KeyError(f"{pyproject}: no optional-dependencies group {extra!r}")
        deps.extend(optional[extra])
    return deps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="optional group to add")
    parser.add_argument("--only", action="append", default=None, help="keep only this dependency")
    args = parser.parse_args(argv)
    try:
        print("\n".join(requirements(args.pyproject, args.extra, args.only)))
    except (OSError, KeyError, ValueError) as err:
        print(f"pyproject_requirements: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
