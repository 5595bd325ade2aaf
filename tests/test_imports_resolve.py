"""Every ``from <our package> import name`` in the tree names something that exists, including the
imports inside functions, which only run when that path runs (a benchmark's option, an error branch):
a module moved or a name dropped in a refactor fails here in seconds instead of in a slow test or at a
user's first click."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("app", "backends", "serving", "ui", "monitoring", "optimization", "benchmarks", "tests")


def our_imports() -> list[tuple[str, int, str, str]]:
    found = []
    for path in sorted(ROOT.glob("*.py")) + sorted(p for d in OURS if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py")):
        if ".venv" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] in OURS:
                found += [(str(path.relative_to(ROOT)), node.lineno, node.module, a.name) for a in node.names]
    return found


def test_every_import_of_our_modules_resolves():
    missing = []
    for where, line, module, name in our_imports():
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - reported with the place that imports it
            missing.append(f"{where}:{line} from {module}: {type(exc).__name__}: {exc}")
            continue
        if name != "*" and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{where}:{line} from {module} import {name}")
    assert missing == [], "\n".join(missing)


def test_the_check_reads_imports_inside_functions():
    """bench_serving imports physical_cores inside a function (only with --threads auto): it is seen."""
    inside = [(w, m) for w, _, m, n in our_imports() if w == "benchmarks/bench_serving.py" and n == "physical_cores"]
    assert inside == [("benchmarks/bench_serving.py", "backends.threads")]
