"""Importance-matrix quantization in the lab: compute a source's importance matrix from a calibration
text (the user's file or the built-in one), then measure what it buys: each low-bit GGUF type
with and without it (``llamacpp:Q2_K`` beside ``llamacpp:Q2_K+imatrix``) scored by Evaluate against
the F16 on a text the matrix was NOT computed from, the KLD change per type.

The matrix is llama.cpp's own (backends/llamacpp/imatrix.py: llama-imatrix's computation through the
engine), cached beside the source's variants; the last one computed is the one ``+imatrix`` variants
use, and each variant's provenance names its calibration text and size.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import Callable
from pathlib import Path

from backends.errors import InvalidRequest, ModelNotFound
from backends.files import gguf, imatrix_file, sources
from backends.files.imatrix_file import IMATRIX_MARK
from optimization import quality
from optimization.lab import Lab, Variant

IMATRIX_REFERENCE = "llamacpp:F16"
DEFAULT_TYPES = ("Q2_K", "Q3_K_M")
MAX_CALIBRATION_BYTES = 2 * 2**20  # ~500k tokens: far more than an importance matrix needs


def read_text(path: str | None, max_bytes: int = MAX_CALIBRATION_BYTES) -> tuple[str, str]:
    """(text, name): the calibration file's first ``max_bytes`` (a cut character left out), or the built-in text."""
    if not path:
        return imatrix_file.default_calibration_text(), imatrix_file.DEFAULT_CALIBRATION
    p = Path(path)
    if not p.is_file():
        raise InvalidRequest(f"No calibration text at {path!r}.", "calibration")
    with open(p, "rb") as f:
        data = f.read(max_bytes)
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False), p.name


def source_gguf(lab: Lab, source: str) -> Path:
    """The GGUF file of a local source ("embedded", a .gguf, or a folder holding one)."""
    try:
        path = sources.resolve_local(source or "embedded", lab.manager.allowed_dir)
    except ModelNotFound as exc:
        raise InvalidRequest(str(exc), "model") from exc
    if path.is_dir() and any(path.glob("*.gguf")):
        path = sources.find_gguf(path, None)
    if not (path.is_file() and path.suffix == ".gguf"):
        raise InvalidRequest(f"An importance matrix is made for a GGUF model on this machine; {source!r} is not one "
                             "(convert a checkpoint to GGUF first).", "model")
    return path


def _confined_text(lab: Lab, path: str | None, what: str) -> str | None:
    if not path:
        return None
    try:
        return str(sources.resolve_local(path, lab.manager.allowed_dir))
    except ModelNotFound as exc:
        raise InvalidRequest(str(exc).replace("Models must", f"{what} must").replace("No model at", f"No {what} at"),
                             what) from exc


def compute(lab: Lab, source: str = "embedded", calibration_path: str | None = None,
            progress: Callable[[float, str], None] = lambda f, m: None,
            cancel: threading.Event | None = None) -> dict:
    """Compute (or reuse) ``source``'s importance matrix over the calibration text and make it the
    one its ``+imatrix`` variants use. Returns its record (+ "path", "line")."""
    from backends.llamacpp.imatrix import compute_and_store

    src = source_gguf(lab, source)
    text, name = read_text(_confined_text(lab, calibration_path, "calibration text"))
    gpu = lab.base_spec.n_gpu_layers if lab.base_spec is not None else 0  # None: the server's default (all)
    if not lab._lock.acquire(timeout=0.1):
        raise InvalidRequest("Another comparison or evaluation is running; try again when it is done.")
    try:
        # the F16 is loaded to compute it: OutOfMemory before anything when it cannot fit
        lab.check_memory(source, [Variant.parse(IMATRIX_REFERENCE, lab.registry)], imatrix_file.CHUNK, together=False)
        path, record = compute_and_store(src, lab.manager.cache_dir or sources.default_cache_dir(), text, name,
                                         n_gpu_layers=gpu, progress=progress, cancel=cancel)
    finally:
        lab._lock.release()
    return {**record.as_dict(), "path": str(path), "line": record.line()}


def current(lab: Lab, source: str = "embedded") -> dict | None:
    """The importance matrix ``+imatrix`` variants of ``source`` use now (None: none computed yet)."""
    src = source_gguf(lab, source)
    folder = gguf.variants_folder(src, lab.manager.cache_dir or sources.default_cache_dir())
    path = imatrix_file.current(folder)
    record = imatrix_file.read_record(path) if path else None
    return {**record.as_dict(), "path": str(path), "line": record.line()} if record else None


def imatrix_variants(types) -> list[str]:
    """["llamacpp:Q2_K", "llamacpp:Q2_K+imatrix", ...] for the GGUF types asked for."""
    if isinstance(types, str):
        types = [t for t in types.split(",") if t.strip()]
    out = []
    for t in types or DEFAULT_TYPES:
        base = imatrix_file.split_quant(str(t).strip())[0].upper()
        if base not in gguf.GGUF_FTYPES or base in ("F16", "F32", "BF16"):
            raise InvalidRequest(f"{t!r} is not a low-bit GGUF type (e.g. Q2_K, Q3_K_M, Q4_K_M).", "types")
        out += [f"llamacpp:{base}", f"llamacpp:{base}{IMATRIX_MARK}"]
    return list(dict.fromkeys(out))


def gain(rows: list[dict]) -> list[dict]:
    """Per GGUF type evaluated both ways: the KLD (mean, p99), top-1 and PPL without and with the
    importance matrix, and the change of the mean KLD in % (negative: the matrix helps)."""
    by = {r["variant"]: r for r in rows if not r.get("is_reference")}
    out = []
    for label, with_ in by.items():
        if not label.endswith(IMATRIX_MARK):
            continue
        plain = by.get(label[: -len(IMATRIX_MARK)])
        if plain is None:
            continue
        change = (with_["kld_mean"] - plain["kld_mean"]) / plain["kld_mean"] * 100 if plain["kld_mean"] else 0.0
        out.append({"type": label.split(":", 1)[1][: -len(IMATRIX_MARK)],
                    "kld_mean_without": plain["kld_mean"], "kld_mean_with": with_["kld_mean"],
                    "kld_change_pct": round(change, 2),
                    "kld_p99_without": plain["kld_p99"], "kld_p99_with": with_["kld_p99"],
                    "top1_without": plain["top1_agreement"], "top1_with": with_["top1_agreement"],
                    "ppl_without": plain["ppl"], "ppl_with": with_["ppl"]})
    return out


def check_held_out(lab: Lab, source: str, text_path: str | None) -> None:
    """Refuse to measure the imatrix on its own calibration text (the gain would be flattering)."""
    cur = current(lab, source)
    if cur is None:
        return
    path = _confined_text(lab, text_path, "evaluation text")
    text = read_text(path)[0] if path else quality.stdlib_text()
    if imatrix_file.text_sha(text) == cur["calibration_sha"]:
        raise InvalidRequest(f"The evaluation text is the importance matrix's calibration text ({cur['calibration']}): "
                             "measure the gain on text it was not computed from.", "text_path")


def gain_markdown(rows: list[dict]) -> str:
    """One line per type evaluated with and without the importance matrix ("" when none was): what
    Evaluate's legend shows."""
    lines = [f"{g['type']}: KLD {g['kld_mean_without']:.4f} -> {g['kld_mean_with']:.4f} ({g['kld_change_pct']:+.1f} %)"
             for g in gain(rows)]
    return ("**What the importance matrix buys** (same reference, same tokens): " + " · ".join(lines)) if lines else ""
