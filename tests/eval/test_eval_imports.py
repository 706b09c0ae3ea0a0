"""`eval` uses ssl_distill only through backbones, data, registries and config: never objectives or trainer."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

EVAL = Path(__file__).resolve().parents[2] / "eval"
ALLOWED = (
    "ssl_distill.backbones",
    "ssl_distill.data",
    "ssl_distill.registry",
    "ssl_distill.config",
    "ssl_distill.errors",
    "ssl_distill.files",
    "ssl_distill.runtime",
    "ssl_distill.schema",
    "ssl_distill.launch.executors",
    "ssl_distill.knn",  # the one weighted-kNN vote, shared with the training monitor
    "ssl_distill.checkpoints",
)
FORBIDDEN = ("ssl_distill.objectives", "ssl_distill.engine")


def _imported_names(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_eval_sources_import_only_the_allowed_parts_of_ssl_distill():
    files = sorted(EVAL.rglob("*.py"))
    assert len(files) >= 10
    for path in files:
        for name in _imported_names(path):
            if name == "ssl_distill" or name.startswith("ssl_distill."):
                assert name.startswith(ALLOWED), f"{path.name} imports {name}"


def test_eval_modules_import_no_eval_module_that_imports_them_back():
    """No import circle inside eval: the graph of eval -> eval imports has no cycle."""
    graph = {
        p.stem: {n.split(".")[1] for n in _imported_names(p) if n.startswith("eval.") and n.count(".") >= 1}
        for p in EVAL.glob("*.py")
    }
    graph = {name: {dep for dep in deps if dep in graph and dep != name} for name, deps in graph.items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(dep == target or (dep not in seen and reaches(dep, target, seen | {dep})) for dep in graph[start])

    assert not [name for name in graph if reaches(name, name, {name})]


@pytest.mark.slow
def test_importing_eval_loads_no_objective_or_trainer_module():
    modules = [f"eval.{p.stem}" for p in sorted(EVAL.glob("*.py")) if p.stem != "__init__"]
    code = (
        f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ssl_distill'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=EVAL.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "ssl_distill.backbones" in loaded
    assert not [m for m in loaded if m.startswith(FORBIDDEN)], loaded
