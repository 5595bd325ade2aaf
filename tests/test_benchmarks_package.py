"""The benchmarks are a package: every module at its top level is one benchmark that runs as
``python -m benchmarks.<name>`` from the repository root (here: imports and parses ``--help``, so a
broken import or a moved helper fails CI), what they share lives in ``benchmarks.common``, no module
edits ``sys.path``, and none imports the tests (the in-process app is ``app.LiveServer``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_architecture import imported_modules

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "benchmarks"
ENTRIES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py")


def test_the_package_has_its_benchmarks_and_their_shared_code():
    assert (PACKAGE / "__init__.py").is_file() and (PACKAGE / "common" / "__init__.py").is_file()
    assert "bench_serving" in ENTRIES and len(ENTRIES) >= 10, ENTRIES
    documented = (PACKAGE / "__init__.py").read_text()
    assert [name for name in ENTRIES if name not in documented] == []  # the package docstring lists each


@pytest.mark.parametrize("name", ENTRIES)
def test_each_benchmark_runs_as_a_module_and_explains_its_options(name):
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:500]  # argparse answered; nothing was measured


def python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_benchmark_module_edits_sys_path():
    wrong = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert wrong == [], "sys.path used in: " + ", ".join(wrong)


def test_no_benchmark_module_imports_the_tests():
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in python_files()
             for line, m in imported_modules(p) if m.split(".")[0] in ("tests", "conftest")]
    assert wrong == []


def test_the_benchmark_entries_never_import_each_other():
    """Shared code goes to benchmarks.common, so an entry can change without breaking another."""
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in python_files()
             for line, m in imported_modules(p)
             if m.startswith("benchmarks.bench_") and m.split(".")[1] != p.stem]
    assert wrong == [], wrong
