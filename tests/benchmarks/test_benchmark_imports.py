"""Every ``from ats_wsi... import name`` of a benchmark script exists, in the script and in the
child scripts it runs from a string (benchmarks are not run by the suite; a renamed function
must not leave one broken until someone runs it)."""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _trees(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    yield tree
    for node in ast.walk(tree):  # code run in a child process: a string holding `import` lines
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "from ats_wsi" in node.value:
            try:
                yield ast.parse(node.value)
            except SyntaxError:
                continue


def _ats_imports(path: Path) -> list[tuple[str, str]]:
    return sorted({(n.module, a.name) for tree in _trees(path) for n in ast.walk(tree)
                   if isinstance(n, ast.ImportFrom) and not n.level and (n.module or "").startswith("ats_wsi")
                   for a in n.names})


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_a_benchmark_imports_only_names_that_exist(script):
    missing = []
    for module, name in _ats_imports(BENCHMARKS / script):
        try:
            found = importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{module} ({exc})")
            continue
        if name != "*" and not hasattr(found, name) and importlib.util.find_spec(f"{module}.{name}") is None:
            missing.append(f"{module}.{name}")
    assert not missing, f"benchmarks/{script} imports what does not exist: {missing}"


def test_the_checker_sees_a_child_scripts_imports():
    names = _ats_imports(BENCHMARKS / "predict_memory.py")
    assert ("ats_wsi.classifier", "build_model") in names and ("ats_wsi.run.demo", "demo_model_config") in names
