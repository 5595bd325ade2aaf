"""llama.cpp's own checkpoint -> GGUF converter (``convert_hf_to_gguf.py``, its ``conversion/`` package
and its ``gguf-py``), taken from the llama.cpp that the installed llama-cpp-python vendors, so the
files it writes are the ones this engine reads. Nothing of it is imported into the app's process:
``hf_to_gguf`` runs it in a subprocess with the vendored ``gguf-py`` first on PYTHONPATH (the PyPI
``gguf`` that transformers uses is a different snapshot of the same package name).

Where it comes from, first found wins, extracted once into ``<cache>/converter/llama.cpp-<version>/``:
1. ``$QUANTLAB_LLAMA_SDIST``: a ``llama_cpp_python-<version>.tar.gz`` already on disk (offline machines);
2. the sdist that ``benchmarks/build_llama_tools.sh`` downloaded (``$QUANTLAB_TOOLS_DIR`` or
   ``~/.cache/quantlab-tools``, ``src/``);
3. ``pip download --no-deps --no-binary :all: llama-cpp-python==<version>`` from PyPI.
Only the converter's files are kept (about 2 MB), never the C++ sources.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from importlib import metadata
from pathlib import Path

from backends.base import Progress, _no_progress
from backends.errors import ModelLoadError

PACKAGE = "llama-cpp-python"
SCRIPT = "convert_hf_to_gguf.py"
KEEP = (SCRIPT, "conversion/", "gguf-py/gguf/", "LICENSE")  # under vendor/llama.cpp/ in the sdist
MARKER = "quantlab-converter.txt"


class ConverterUnavailable(ModelLoadError):
    """llama.cpp's converter (or a Python package it needs) is missing here; the message says how to get it."""

    code = "converter_unavailable"


def engine_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise ConverterUnavailable(f"{PACKAGE} is not installed: pip install -r requirements.txt") from exc


def converter_home(cache_dir: Path, version: str | None = None) -> Path:
    return cache_dir / "converter" / f"llama.cpp-{version or engine_version()}"


def how_to_get(version: str) -> str:
    return (f"Download it once with `python -m pip download --no-deps --no-binary :all: {PACKAGE}=={version} -d DIR` "
            f"and set QUANTLAB_LLAMA_SDIST=DIR/llama_cpp_python-{version}.tar.gz")


def ensure_converter(cache_dir: Path, progress: Progress = _no_progress) -> Path:
    """The folder holding ``convert_hf_to_gguf.py`` for the installed engine's llama.cpp (made once)."""
    version = engine_version()
    home = converter_home(cache_dir, version)
    if (home / MARKER).is_file():
        return home
    sdist = _local_sdist(version)
    with tempfile.TemporaryDirectory(prefix="quantlab-sdist-") as tmp:
        if sdist is None:
            progress(0.0, f"Fetching llama.cpp's converter ({PACKAGE} {version} source from PyPI, first time only)")
            sdist = _pip_download(version, Path(tmp))
        progress(0.0, f"Extracting llama.cpp's converter from {sdist.name}")
        staging = home.with_name(home.name + f".tmp-{uuid.uuid4().hex[:8]}")
        try:
            _extract(sdist, staging, version)
            (staging / MARKER).write_text(f"from {sdist.name}\n")
            shutil.rmtree(home, ignore_errors=True)
            os.replace(staging, home)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return home


def _local_sdist(version: str) -> Path | None:
    name = f"llama_cpp_python-{version}.tar.gz"
    env = os.environ.get("QUANTLAB_LLAMA_SDIST", "").strip()
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            path = path / name
        if not path.is_file():
            raise ConverterUnavailable(f"QUANTLAB_LLAMA_SDIST points at {path}, which does not exist. {how_to_get(version)}.")
        return path
    tools = Path(os.environ.get("QUANTLAB_TOOLS_DIR") or Path.home() / ".cache" / "quantlab-tools")
    path = tools / "src" / name
    return path if path.is_file() else None


def _pip_download(version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
           "-d", str(into), f"{PACKAGE}=={version}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConverterUnavailable(f"llama.cpp's converter is not here and pip could not fetch it ({exc}). "
                                   f"{how_to_get(version)}.") from exc
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        last = ([ln for ln in (done.stderr or "").splitlines() if ln.strip()] or ["no output"])[-1].strip()
        raise ConverterUnavailable(f"llama.cpp's converter is not here and pip could not download the "
                                   f"{PACKAGE} {version} source: {last[:300]}. {how_to_get(version)}.")
    return found[0]


def _extract(sdist: Path, staging: Path, version: str) -> None:
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            members = []
            for m in tar.getmembers():
                if not (m.isfile() and m.name.startswith(prefix)):
                    continue
                rel = m.name[len(prefix):]
                if any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in KEEP) and "__pycache__" not in rel:
                    m.name = rel
                    members.append(m)
            if not any(m.name == SCRIPT for m in members):
                raise ConverterUnavailable(f"{sdist.name} holds no vendor/llama.cpp/{SCRIPT}. {how_to_get(version)}.")
            staging.mkdir(parents=True, exist_ok=True)
            tar.extractall(staging, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConverterUnavailable(f"Cannot read {sdist}: {exc}. {how_to_get(version)}.") from exc


def converter_command(home: Path, checkpoint: Path, outfile: Path, outtype: str = "f16",
                      mmproj: bool = False) -> tuple[list[str], dict]:
    """(argv, env) to run the converter in a subprocess with its own gguf-py first on the path;
    ``mmproj``: a vision model's multimodal projector instead of its text model."""
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join([str(home / "gguf-py"), str(home)]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, str(home / SCRIPT), str(checkpoint), "--outfile", str(outfile), "--outtype", outtype]
    if mmproj:
        argv.append("--mmproj")
    return argv, env
