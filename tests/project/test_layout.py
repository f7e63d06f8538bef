"""The package's shape, checked: dvc.yaml's code dependencies are complete, and no import
cycle hides behind an import inside a function.

Both walk the real source with :mod:`ast` (every ``import``, at module level or inside a
function, since a lazily imported module runs all the same), so a new import that a stage's
``deps`` do not cover, or a new cycle, fails here before it can leave a stage "up to date"
with stale outputs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
PACKAGE = "lymphaug"


def module_file(module: str, src: Path = SRC) -> Path | None:
    """The file of a dotted module inside the package (a package's ``__init__.py``)."""
    base = src.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(module: str, src: Path = SRC) -> set[str]:
    """The package's own modules that ``module`` imports, anywhere in its body.

    ``from lymphaug.x import y`` counts ``lymphaug.x.y`` when that is a module, else
    ``lymphaug.x``; importing a submodule also runs its parent packages' ``__init__``.
    """
    path = module_file(module, src)
    assert path is not None, module
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            names += [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] == PACKAGE and module_file(name, src) is not None:
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    found.discard(module)
    return {m for m in found if module_file(m, src) is not None}


def closure(module: str, src: Path = SRC) -> set[str]:
    """``module`` and everything it imports inside the package, transitively."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(imports_of(m, src) - seen)
    return seen


def all_modules(src: Path = SRC) -> list[str]:
    root = src / PACKAGE
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def import_cycles(src: Path = SRC) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph = {m: imports_of(m, src) for m in all_modules(src)}
    # a package's __init__ that imports nothing is no edge back from its submodules
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def stage_module(cmd: str) -> str:
    """``lymphaug train --condition ...`` -> ``lymphaug.train`` (cli.STAGES maps it)."""
    from lymphaug.cli import STAGES

    words = cmd.split()
    assert words[0] == PACKAGE, f"stage command {cmd!r} does not run the lymphaug CLI"
    return STAGES[words[1]][0]


def stage_code(cmd: str, src: Path = SRC) -> set[Path]:
    """Every source file a stage's command runs: the CLI, the stage module, their imports."""
    modules = closure(f"{PACKAGE}.cli", src) | closure(stage_module(cmd), src)
    return {module_file(m, src).relative_to(src.parent) for m in modules}


def uncovered(files: set[Path], deps: list[str]) -> list[str]:
    """The files that no ``deps`` entry (a file or a folder above it) names."""
    dep_paths = [Path(d) for d in deps]
    return sorted(str(f) for f in files if not any(f == d or d in f.parents for d in dep_paths))


def dvc_stages(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    return yaml.safe_load(dvc_yaml.read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_deps_cover_the_code_it_runs(stage):
    spec = dvc_stages()[stage]
    missing = uncovered(stage_code(spec["cmd"]), spec.get("deps", []))
    assert not missing, f"dvc.yaml stage {stage!r}: add to its deps: {missing}"


def test_deps_check_catches_a_missing_import(tmp_path):
    """The check itself can fail: a stage that imports an undeclared helper is reported."""
    pkg = tmp_path / "src" / PACKAGE
    (pkg / "common").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "common" / "__init__.py").write_text("")
    (pkg / "common" / "helper.py").write_text("X = 1\n")
    (pkg / "cli.py").write_text("import argparse\n")
    (pkg / "split.py").write_text("def run():\n    from lymphaug.common.helper import X\n")
    code = stage_code("lymphaug split", tmp_path / "src")
    assert uncovered(code, ["src/lymphaug/split.py", "src/lymphaug/cli.py"]) == [
        "src/lymphaug/__init__.py",
        "src/lymphaug/common/__init__.py",
        "src/lymphaug/common/helper.py",
    ]
    declared = ["src/lymphaug/__init__.py", "src/lymphaug/cli.py", "src/lymphaug/common"]
    assert uncovered(code, [*declared, "src/lymphaug/split.py"]) == []


def test_no_import_cycles():
    assert import_cycles() == []


def test_cycle_check_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from lymphaug.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from lymphaug.a import g  # hidden\n")
    assert import_cycles(tmp_path) == [["lymphaug.a", "lymphaug.b"]]


# params that change no training result: where it runs, how many threads, which seeds exist
NOT_RESULT_PARAMS = {"seeds", "device", "num_threads"}
PER_CONDITION = {"dct_methods": "dct", "synthetic_dir": "synthetic"}


@pytest.mark.parametrize("condition", ["base", "dct", "synthetic"])
def test_train_stages_depend_on_every_training_param(condition):
    """A new TrainConfig field that a train stage does not list would leave its models stale."""
    from lymphaug.common.config import TrainConfig

    listed = {
        p.removeprefix("train.")
        for p in dvc_stages()[f"train-{condition}"]["params"]
        if isinstance(p, str) and p.startswith("train.")
    }
    wanted = {
        name
        for name in TrainConfig.model_fields
        if name not in NOT_RESULT_PARAMS and PER_CONDITION.get(name, condition) == condition
    }
    assert wanted - listed == set(), f"dvc.yaml train-{condition}: add params {wanted - listed}"
