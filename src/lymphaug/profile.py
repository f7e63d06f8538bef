"""Params presets: ``lymphaug profile paper`` merges ``profiles/paper.yaml`` into params.yaml.

The values land in params.yaml itself (comments kept), so ``dvc params diff``
and ``dvc exp show`` show the real settings of a run, not a profile name.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from ruamel.yaml import YAML

from lymphaug.common.config import parse_params
from lymphaug.common.errors import ConfigError
from lymphaug.common.files import write_text_atomic

PROFILES_DIR = Path("profiles")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="preset name: a file profiles/<name>.yaml (e.g. 'paper')")
    p.add_argument("--profiles-dir", default=str(PROFILES_DIR), help="default: %(default)s")


def deep_merge(base: dict, override: dict, where: str = "") -> dict:
    """Merge ``override`` into ``base`` in place; a key unknown to ``base`` is an error."""
    for key, value in override.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in base:
            raise ConfigError(f"profile sets unknown key '{path}'")
        if isinstance(value, dict) and isinstance(base[key], dict):
            deep_merge(base[key], value, path)
        else:
            base[key] = value
    return base


def apply_profile(params_path: Path, profile_path: Path) -> None:
    """Merge a preset into params.yaml, validate the result, write it atomically."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    if not profile_path.is_file():
        available = sorted(p.stem for p in profile_path.parent.glob("*.yaml"))
        raise ConfigError(f"{profile_path}: no such profile (available: {available})")
    base = _load(yaml, params_path)
    override = _load(yaml, profile_path) or {}
    merged = deep_merge(base, override)
    parse_params(_plain(merged), f"{params_path} + {profile_path}")
    out = io.StringIO()
    yaml.dump(merged, out)
    write_text_atomic(params_path, out.getvalue())


def _load(yaml: YAML, path: Path):
    """Round-trip load (comments kept); a duplicate key or bad YAML is one ConfigError."""
    from ruamel.yaml.error import YAMLError

    try:
        return yaml.load(path.read_text())
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: {getattr(err, 'problem', None) or err}{where}") from None


def _plain(obj: object) -> object:
    """ruamel's commented containers -> plain dicts/lists for validation."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def run(params_path: Path, args: argparse.Namespace) -> int:
    profile_path = Path(args.profiles_dir) / f"{args.name}.yaml"
    apply_profile(params_path, profile_path)
    print(f"{params_path}: applied {profile_path}; `dvc params diff` shows the changes")
    return 0
