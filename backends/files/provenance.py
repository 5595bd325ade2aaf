"""Where a variant comes from and what it really holds, told plainly: its source and the source's
type (a variant of an already-quantized file is measured against that file dequantized, not against
the original weights), a warning when a variant has more bits than its source, and for GGUF files
the tensor types and measured bits per weight read from the header."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from backends.files import gguf, imatrix_file
from backends.files.quant_methods import METHODS

UNQUANTIZED = {"F32", "F16", "BF16", "fp32", "fp16", "bf16", "float32", "float16", "bfloat16"}
# nominal bits per weight of the transformers quantizations (bitsandbytes keeps norms and embeddings)
NOMINAL_BPW = {"fp32": 32.0, "bf16": 16.0, "fp16": 16.0, "int8": 8.0, "nf4": 4.0, "fp4": 4.0,
               **{q: m.bits for q, m in METHODS.items()}}


@functools.lru_cache(maxsize=256)
def _summary(path: str, mtime_ns: int, size: int) -> dict:
    return gguf.tensor_summary(Path(path))


def tensor_summary(path: Path) -> dict | None:
    """The GGUF header's tensor types and bpw (cached per file version); None for other files."""
    try:
        if not (path.is_file() and path.suffix == ".gguf"):
            return None
        st = path.stat()
        return _summary(str(path), st.st_mtime_ns, st.st_size)
    except Exception:  # noqa: BLE001 - an unreadable file has no summary; the load says why
        return None


def _source_type(path: Path | None) -> str | None:
    if path is None:
        return None
    if path.is_file() and path.suffix == ".gguf":
        try:
            return gguf.gguf_file_type(path)
        except Exception:  # noqa: BLE001
            return None
    cfg = path / "config.json" if path.is_dir() else None
    if cfg is not None and cfg.is_file():
        try:
            dtype = json.loads(cfg.read_text()).get("torch_dtype") or json.loads(cfg.read_text()).get("dtype")
        except (OSError, ValueError):
            return None
        return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)
    return None


def provenance(loaded_path: str | Path | None, quantization: str, source: str | Path | None = None,
               projector: str | None = None) -> dict:
    """{source, source_type, already_quantized, note, warning, tensor_types, bpw, source_bpw, tensors}
    of a loaded variant. ``loaded_path``: the file or folder the engine loaded; ``source``: what the
    user chose (when known; else read from the record this app keeps beside its variants);
    ``projector``: a vision model's projector ("mmproj-x.gguf (F16)"), which every variant shares at
    its own type (the note says so)."""
    loaded = Path(loaded_path) if loaded_path else None
    src = Path(source) if source else None
    if src is None and loaded is not None:
        rec = gguf.source_of(loaded) if loaded.is_file() else None
        if rec:
            src = Path(rec["source"])
        elif loaded.is_dir() and (loaded / "quantlab-derived.txt").is_file():
            name = (loaded / "quantlab-derived.txt").read_text().strip().removeprefix("derived from ").strip()
            src = next((p for p in (loaded.parent.parent / "gguf").glob(f"*/{name}") if p.is_file()), None) or Path(name)
        else:
            src = loaded
    src_type = _source_type(src) if src is not None and src.exists() else None
    if src_type is None and src is not None and src.suffix == ".gguf":  # a record of a file since moved
        parts = src.stem.rsplit(".", 1)
        src_type = parts[1] if len(parts) == 2 and parts[1].upper() in gguf.GGUF_FTYPES else None
    summary = tensor_summary(loaded) if loaded is not None else None
    src_summary = tensor_summary(src) if src is not None else None
    bpw = summary["bpw"] if summary else NOMINAL_BPW.get(quantization)
    src_bpw = src_summary["bpw"] if src_summary else NOMINAL_BPW.get(src_type or "")
    already = bool(src_type) and src_type not in UNQUANTIZED
    name = src.name if src is not None else "unknown source"
    if loaded is not None and src is not None and loaded.exists() and src.exists() and loaded.resolve() == src.resolve():
        note = f"{name} as given" + (f" ({src_type}, already quantized)" if already else f" ({src_type})" if src_type else "")
    elif already:
        note = (f"from {src_type} ({name}): already quantized; the reference is the dequantized {src_type}, "
                "not the original weights")
    elif src_type:
        note = f"from {src_type} ({name})"
    else:
        note = f"from {name}"
    if projector:
        note += f"; vision projector {projector}, kept at its own type"
    imatrix = imatrix_of(loaded)
    if imatrix:
        note += f" · {imatrix['line']}"
    warning = None
    if bpw and src_bpw and bpw > src_bpw + 0.05 and quantization not in UNQUANTIZED:  # floats: the note says it
        warning = (f"{quantization} has more bits ({bpw:.2f} bpw) than its source {src_type or name} "
                   f"({src_bpw:.2f} bpw): the extra bits cannot restore what the source lost")
    method = METHODS[quantization].description if quantization in METHODS else None
    return {
        "method": method,
        "source": str(src) if src is not None else None, "source_name": name, "source_type": src_type,
        "already_quantized": already, "note": note, "warning": warning,
        "tensor_types": summary["types"] if summary else None, "n_tensors": summary["n_tensors"] if summary else None,
        "bpw": round(bpw, 2) if bpw else None, "bpw_measured": summary is not None,
        "source_bpw": round(src_bpw, 2) if src_bpw else None,
        "tensors": f"{quantization}: {gguf.describe_tensors(summary)}" if summary else None,
        "imatrix": imatrix,
    }


def imatrix_of(loaded: Path | None) -> dict | None:
    """The importance matrix a GGUF was quantized with (its ``quantize.imatrix.*`` keys, and the
    record this app keeps beside the matrix: calibration text, size, tokens), None without one."""
    if loaded is None or not (loaded.is_file() and loaded.suffix == ".gguf"):
        return None
    try:
        meta = gguf.read_gguf_metadata(loaded)
    except Exception:  # noqa: BLE001 - an unreadable header has no imatrix to tell
        return None
    if not meta.get("quantize.imatrix.file"):
        return None
    name = str(meta["quantize.imatrix.file"])
    rec = imatrix_file.read_record(imatrix_file.imatrix_dir(loaded.parent) / Path(name).name)
    out = {"file": name, "dataset": meta.get("quantize.imatrix.dataset"),
           "entries": meta.get("quantize.imatrix.entries_count"), "chunks": meta.get("quantize.imatrix.chunks_count")}
    if rec:
        out.update(rec.as_dict(), line=rec.line())
    else:
        out["line"] = f"importance matrix {name} (calibration: {out['dataset'] or 'unknown'})"
    return out


def provenance_line(p: dict) -> str:
    """One line for a status or a pane: tensors · method · note · ⚠ warning."""
    parts = [x for x in (p.get("tensors"), p.get("method"), p.get("note")) if x]
    if p.get("warning"):
        parts.append("⚠ " + p["warning"])
    return " · ".join(parts)
