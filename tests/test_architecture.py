"""The package layering holds: every import points down, and the UI never touches an engine.

backends <- monitoring <- optimization <- serving <- ui <- app.py (each may import those to its left).
Every import counts, including the ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["backends", "monitoring", "optimization", "serving", "ui"]
ENGINES = {"torch", "llama_cpp", "transformers", "bitsandbytes"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_every_import_points_down():
    wrong = []
    for rank, package in enumerate(LAYERS):
        assert python_files(package), f"{package}/ has no modules"
        above = set(LAYERS[rank + 1:]) | {"app", "tests", "benchmarks"}
        for path in python_files(package):
            for line, module in imported_modules(path):
                if module.split(".")[0] in above:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert wrong == [], "imports that point up:\n" + "\n".join(wrong)


def test_the_ui_and_the_service_layer_never_import_an_engine():
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {m}"
             for package in ("ui", "serving", "monitoring", "optimization") for p in python_files(package)
             for line, m in imported_modules(p) if m.split(".")[0] in ENGINES]
    assert wrong == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule above is live: a module importing a higher layer inside a function is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from serving.settings import Settings\n    return Settings\n")
    assert (2, "serving.settings") in imported_modules(bad)


def test_backends_know_nothing_of_web_frameworks():
    web = {"gradio", "fastapi", "starlette", "uvicorn"}
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {m}" for package in ("backends", "monitoring", "optimization")
             for p in python_files(package) for line, m in imported_modules(p) if m.split(".")[0] in web]
    assert wrong == []


ENGINE_PACKAGES = {"backends.llamacpp", "backends.hf"}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def module_level_imports(path: Path) -> list[tuple[int, str]]:
    """Imports that run when the module is imported (not those inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_the_weight_files_package_never_imports_an_engine():
    """backends/files/ (sources, Hub cache, GGUF, converters, provenance) never imports an engine package
    (backends.llamacpp, backends.hf), so every backend and the lab can use it; its converters call an engine
    library (llama.cpp's quantizer, transformers' GGUF reader) only inside the function that converts."""
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in python_files("backends/files")
             for line, m in imported_modules(p) if any(_under(m, e) for e in ENGINE_PACKAGES)]
    wrong += [f"{p.relative_to(ROOT)}:{line} imports {m} at module level" for p in python_files("backends/files")
              for line, m in module_level_imports(p) if m.split(".")[0] in ENGINES]
    assert wrong == []


def test_the_engine_packages_never_import_each_other():
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {m}"
             for mine, other in (("backends/llamacpp", "backends.hf"), ("backends/hf", "backends.llamacpp"))
             for p in python_files(mine) for line, m in imported_modules(p) if _under(m, other)]
    assert wrong == []


def test_only_engine_packages_import_their_engine():
    """llama_cpp is imported only under backends/llamacpp/, torch, transformers and bitsandbytes only under
    backends/hf/ (beside the converters in backends/files/, inside their functions, and backends/memory.py,
    which empties the CUDA cache when torch is already loaded)."""
    homes = {"llama_cpp": ("backends/llamacpp/", "backends/files/"),
             "torch": ("backends/hf/", "backends/files/", "backends/memory.py"),
             "transformers": ("backends/hf/", "backends/files/"), "bitsandbytes": ("backends/hf/",)}
    wrong = [f"{p.relative_to(ROOT).as_posix()}:{line} imports {m}" for p in python_files("backends")
             for line, m in imported_modules(p)
             if m.split(".")[0] in homes and not p.relative_to(ROOT).as_posix().startswith(homes[m.split(".")[0]])]
    assert wrong == []


def test_the_package_rules_see_a_cross_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from backends.hf.quant import check\n")
    assert any(_under(m, "backends.hf") for _, m in imported_modules(bad))


OPENAI_OBJECTS = {"chat.completion", "chat.completion.chunk", "text_completion"}  # OpenAI response bodies
PRODUCT = [*LAYERS, "benchmarks"]  # with app.py: everything but the tests


def openai_edge_leaks(path: Path, rel: str) -> list[str]:
    """Where ``path`` (at ``rel`` in the tree, outside serving/openai/) builds an OpenAI response body
    (an ``object`` value of one) or reaches into the /v1 edge; app.py may import add_openai_routes."""
    package = rel.removesuffix(".py").split("/")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Constant) and node.value in OPENAI_OBJECTS:
            out.append(f"{rel}:{node.lineno} writes the OpenAI object {node.value!r}")
        modules = []
        if isinstance(node, ast.Import):
            modules = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            modules = [(module, tuple(alias.name for alias in node.names))]
        for module, names in modules:
            if rel == "app.py" and module == "serving.openai.routes" and names == ("add_openai_routes",):
                continue  # the app's wiring
            if _under(module, "serving.openai") or (module == "serving" and "openai" in names):
                out.append(f"{rel}:{node.lineno} imports {module}")
    return out


def test_nothing_outside_the_openai_edge_builds_an_openai_body():
    """serving/openai/ is the one place an OpenAI response body is built (the shared pipeline in
    serving/api/, the other dialects beside it); the rest of the app reaches it only through
    add_openai_routes in app.py."""
    paths = [ROOT / "app.py"] + [p for package in PRODUCT for p in python_files(package)]
    wrong = [leak for p in paths if not p.relative_to(ROOT).as_posix().startswith("serving/openai/")
             for leak in openai_edge_leaks(p, p.relative_to(ROOT).as_posix())]
    assert wrong == []


def test_the_openai_edge_rule_sees_a_planted_body_and_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('from serving.openai.choices import ChatChoice\nfrom .openai import errors\n\n\n'
                   'def answer(text):\n    return {"object": "chat.completion", "choices": [text]}\n')
    leaks = openai_edge_leaks(bad, "serving/bad.py")
    assert leaks == ["serving/bad.py:1 imports serving.openai.choices", "serving/bad.py:2 imports serving.openai",
                     "serving/bad.py:6 writes the OpenAI object 'chat.completion'"]
    wiring = tmp_path / "app.py"
    wiring.write_text("from serving.openai.routes import add_openai_routes\n")
    assert openai_edge_leaks(wiring, "app.py") == []
    assert openai_edge_leaks(wiring, "ui/app.py") == ["ui/app.py:1 imports serving.openai.routes"]


DIALECTS = ("serving.openai", "serving.anthropic", "serving.ollama")


def dialect_leaks(path: Path, rel: str) -> list[str]:
    """Where ``path`` (at ``rel``) imports an API dialect it may not: the shared API package
    (serving/api/) none, a dialect no other dialect."""
    own = rel.removesuffix(".py").replace("/", ".")
    return [f"{rel}:{line} imports {m}" for line, m in imported_modules(path)
            for d in DIALECTS if _under(m, d) and not _under(own, d)]


def test_the_shared_api_package_knows_no_dialect_and_dialects_not_each_other():
    """serving/api/ (the pipeline, the error mapper, the stream writer) is what every dialect imports;
    it imports none of them, and no dialect imports another: each is a translation on the pipeline."""
    paths = python_files("serving/api") + [p for d in DIALECTS for p in python_files(d.replace(".", "/"))]
    assert python_files("serving/api") and all(python_files(d.replace(".", "/")) for d in DIALECTS)
    wrong = [leak for p in paths for leak in dialect_leaks(p, p.relative_to(ROOT).as_posix())]
    assert wrong == []


def test_the_dialect_rule_sees_a_planted_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from serving.openai.errors import OPENAI_ERRORS\nfrom serving.api.pipeline import Pipeline\n")
    assert dialect_leaks(bad, "serving/api/bad.py") == ["serving/api/bad.py:1 imports serving.openai.errors"]
    assert dialect_leaks(bad, "serving/ollama/bad.py") == ["serving/ollama/bad.py:1 imports serving.openai.errors"]
    assert dialect_leaks(bad, "serving/openai/bad.py") == []


def llama_constructions(path: Path, rel: str) -> list[str]:
    """Where ``path`` builds a ``llama_cpp.Llama`` itself (``Llama(...)`` or ``<module>.Llama(...)``)."""
    return [f"{rel}:{node.lineno} calls Llama()" for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) and (
                (isinstance(node.func, ast.Name) and node.func.id == "Llama")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "Llama"))]


def test_every_llama_object_is_built_through_open_llama():
    """On CPUs with Intel AMX a plain ``Llama()`` crashes the process on its first batch (llama.cpp's AMX
    kernels in the pinned version; see backends/llamacpp/open.py): the app, the benchmarks and the tests'
    own references all build one through ``open_llama``, which turns those kernels off there."""
    paths = [ROOT / "app.py"] + [p for package in [*PRODUCT, "tests"] for p in python_files(package)]
    wrong = [c for p in paths if p.relative_to(ROOT).as_posix() != "backends/llamacpp/open.py"
             for c in llama_constructions(p, p.relative_to(ROOT).as_posix())]
    assert wrong == []


def test_the_llama_rule_sees_a_planted_construction(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import llama_cpp\nfrom llama_cpp import Llama\n\n"
                   "a = llama_cpp.Llama('m.gguf', embedding=True)\nb = Llama(model_path='m.gguf')\n")
    assert llama_constructions(bad, "tests/bad.py") == ["tests/bad.py:4 calls Llama()", "tests/bad.py:5 calls Llama()"]
