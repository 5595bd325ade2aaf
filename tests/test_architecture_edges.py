"""Two rules of the edges, checked on the source: the reply is parsed in one place (the chat
service's ``serving/pieces.py``; every transport maps its pieces), and every Gradio API endpoint is
defined in one module (``ui/endpoints.py``; the sections only lay out and wire the UI)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_architecture import ROOT, python_files

PARSERS = {"ReasoningSplitter", "split_reasoning", "ToolCallStream", "parse_tool_calls"}


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            names |= {alias.name for alias in node.names}
    return names


def called_names(path: Path) -> set[str]:
    """Names of the functions ``path`` calls (``f(...)`` and ``x.f(...)``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call):
            fn = node.func
            out.add(fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else "")
    return out


def test_only_the_chat_service_parses_a_reply():
    wrong = [f"{p.relative_to(ROOT)} imports {sorted(imported_names(p) & PARSERS)}"
             for package in ("serving", "ui", "optimization") for p in python_files(package)
             if imported_names(p) & PARSERS and p != ROOT / "serving" / "pieces.py"]
    assert wrong == [], "parse the reply once, in serving/pieces.py:\n" + "\n".join(wrong)


def test_every_gradio_endpoint_is_defined_in_ui_endpoints():
    allowed = {ROOT / "ui" / "endpoints.py", ROOT / "ui" / "api_docs.py"}  # api_docs: described_api itself
    wrong = [str(p.relative_to(ROOT)) for p in python_files("ui")
             if p not in allowed and called_names(p) & {"described_api", "api"}]
    assert wrong == [], "define Gradio endpoints in ui/endpoints.py: " + ", ".join(wrong)
    assert "described_api" in called_names(ROOT / "ui" / "endpoints.py")
