"""GGUF files: the fast header reader, the quant types llama.cpp can make, and variants made from one
source with llama.cpp's own quantizer (cached). llama_cpp is imported lazily, only to quantize.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from pathlib import Path

from backends.errors import ModelLoadError, UnsupportedQuantization

# GGUF quant name -> llama.cpp ftype number (enum llama_ftype, stable across releases).
GGUF_FTYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
    "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30, "BF16": 32,
}
GGUF_NAMES_BY_FTYPE = {v: k for k, v in GGUF_FTYPES.items()}
GGUF_AS_FILE = "as file"  # use the GGUF exactly as given
GGUF_MENU: tuple[str, ...] = (GGUF_AS_FILE, "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M",
                              "Q4_1", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_XS", "BF16", "F32")

GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    """Raise ModelLoadError unless ``path`` starts like a GGUF file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelLoadError(f"Cannot read {path.name}: {exc.strerror}.") from exc
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise ModelLoadError(f"{path.name} is not a GGUF model file (it does not start with the GGUF magic).")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in (2, 3):
        raise ModelLoadError(f"{path.name} is GGUF version {version}, which this llama.cpp cannot read.")
    read_gguf_metadata(path)  # the whole header, bounds-checked: a corrupt one fails here, by name


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_metadata(path: Path) -> dict:
    """The key/value header of a GGUF file (arrays skipped), read without touching the tensors:
    milliseconds, where gguf.GGUFReader maps and parses every tensor (seconds). Every count and
    length is checked against the file's size first: a corrupt header is a ModelLoadError naming
    the file, never a huge allocation (which would read as "not enough memory")."""
    try:
        return _read_metadata(path)
    except (struct.error, EOFError, ValueError, OverflowError, MemoryError, RecursionError, KeyError) as exc:
        raise ModelLoadError(f"{path.name} is not a valid GGUF file: its header is corrupt.") from exc


def _read_metadata(path: Path, tensors: list | None = None) -> dict:
    """The key/values; with ``tensors`` (a list), also append each tensor's (name, ggml type id,
    element count) to it, from the tensor infos that follow the key/values."""
    out: dict = {}
    size = path.stat().st_size
    with open(path, "rb") as f:
        def read(n: int) -> bytes:
            if n < 0 or f.tell() + n > size:
                raise EOFError(f"{n} bytes past the end of the file")
            return f.read(n)

        def take(fmt: str):
            return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return read(take("<Q")).decode("utf-8", errors="replace")

        def value(vtype: int, depth: int = 0):
            if vtype == 8:
                return string()
            if vtype == 9:
                itype, n = take("<I"), take("<Q")
                if depth > 8 or n > size:
                    raise ValueError("implausible array")
                if itype in _SCALAR:
                    skip = struct.calcsize(_SCALAR[itype]) * n
                    if f.tell() + skip > size:
                        raise EOFError("array past the end of the file")
                    f.seek(skip, 1)
                else:
                    for _ in range(n):
                        value(itype, depth + 1)
                return None
            return take(_SCALAR[vtype])

        if read(4) != GGUF_MAGIC:
            raise ModelLoadError(f"{path.name} is not a GGUF model file.")
        take("<I")
        n_tensors, n_kv = take("<Q"), take("<Q")
        if n_tensors > size // 24 or n_kv > size // 12:  # each needs at least that many bytes
            raise ValueError("implausible tensor or key count")
        for _ in range(n_kv):
            key = string()
            val = value(take("<I"))
            if val is not None:
                out[key] = val
        if tensors is not None:
            for _ in range(n_tensors):
                name = string()
                n_dims = take("<I")
                if n_dims > 8:
                    raise ValueError("implausible tensor rank")
                n = 1
                for _ in range(n_dims):
                    n *= take("<Q")
                ttype = take("<I")
                take("<Q")  # offset into the data section
                tensors.append((name, ttype, n))
    return out


# ggml tensor type id -> (name as llama.cpp prints it, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("f32", 1, 4), 1: ("f16", 1, 2), 2: ("q4_0", 32, 18), 3: ("q4_1", 32, 20), 6: ("q5_0", 32, 22),
    7: ("q5_1", 32, 24), 8: ("q8_0", 32, 34), 9: ("q8_1", 32, 40), 10: ("q2_K", 256, 84), 11: ("q3_K", 256, 110),
    12: ("q4_K", 256, 144), 13: ("q5_K", 256, 176), 14: ("q6_K", 256, 210), 15: ("q8_K", 256, 292),
    16: ("iq2_xxs", 256, 66), 17: ("iq2_xs", 256, 74), 18: ("iq3_xxs", 256, 98), 19: ("iq1_s", 256, 50),
    20: ("iq4_nl", 32, 18), 21: ("iq3_s", 256, 110), 22: ("iq2_s", 256, 82), 23: ("iq4_xs", 256, 136),
    24: ("i8", 1, 1), 25: ("i16", 1, 2), 26: ("i32", 1, 4), 27: ("i64", 1, 8), 28: ("f64", 1, 8),
    29: ("iq1_m", 256, 56), 30: ("bf16", 1, 2), 34: ("tq1_0", 256, 54), 35: ("tq2_0", 256, 66), 39: ("mxfp4", 32, 17),
}


def tensor_summary(path: Path) -> dict:
    """What a GGUF file really holds, from its header: {"types": {ggml type: tensor count} (most
    first), "n_tensors", "n_params", "tensor_bytes", "bpw"} where bpw = tensor bytes * 8 / params.
    A K-quant mix keeps some tensors at other types (e.g. rows of 576 are no multiple of 256)."""
    found: list = []
    try:
        _read_metadata(path, found)
    except (struct.error, EOFError, ValueError, OverflowError, MemoryError, RecursionError, KeyError) as exc:
        raise ModelLoadError(f"{path.name} is not a valid GGUF file: its header is corrupt.") from exc
    counts: dict[str, int] = {}
    n_params = n_bytes = 0
    for _name, ttype, n in found:
        tname, block, size = GGML_TYPES.get(ttype, (f"type {ttype}", 0, 0))
        counts[tname] = counts.get(tname, 0) + 1
        n_params += n
        n_bytes += n // block * size if block else 0
    types = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return {"types": types, "n_tensors": len(found), "n_params": n_params, "tensor_bytes": n_bytes,
            "bpw": round(n_bytes * 8 / n_params, 2) if n_params else None}


def describe_tensors(summary: dict) -> str:
    """ "92 q4_K, 180 q5_0, 1 f32 · 5.1 bpw" """
    types = ", ".join(f"{n} {t}" for t, n in summary["types"].items())
    return f"{types} · {summary['bpw']:.2f} bpw" if summary.get("bpw") else types


def gguf_file_type(path: Path) -> str | None:
    """The quant name recorded in the file's metadata (general.file_type), if any."""
    ftype = read_gguf_metadata(path).get("general.file_type")
    if ftype is None:
        return None
    return GGUF_NAMES_BY_FTYPE.get(int(ftype), f"ftype {ftype}")


def source_key(path: Path) -> str:
    """Names a derived model after its source file's identity (path, size, mtime)."""
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def quantize_gguf(src: Path, dst: Path, quant: str, importance: dict | None = None,
                  metadata: dict | None = None) -> Path:
    """Write ``src`` re-quantized to ``quant`` at ``dst`` (atomically) with llama.cpp's quantizer.
    ``importance``: tensor name -> float32 values (an importance matrix's sums / counts, as
    llama-quantize passes them); ``metadata``: str/int keys written into the file (kv overrides)."""
    import llama_cpp

    if quant not in GGUF_FTYPES:
        raise UnsupportedQuantization(f"llama.cpp cannot produce {quant!r}.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")  # unique across replicas sharing a cache (all PID 1)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_FTYPES[quant]
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    keep = _quantize_extras(llama_cpp, params, importance or {}, metadata or {})  # noqa: F841 (alive while quantizing)
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    except BaseException:
        _discard(tmp)
        raise
    if rc != 0 or not tmp.exists():
        _discard(tmp)
        raise ModelLoadError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc}).")
    os.replace(tmp, dst)
    return dst


def _quantize_extras(L, params, importance: dict, metadata: dict) -> list:
    """Point ``params.imatrix`` / ``params.kv_overrides`` at null-terminated arrays; returns what
    must stay alive until the quantizer is done."""
    import ctypes

    import numpy as np

    keep: list = []
    if importance:
        entries = (L.llama_model_imatrix_data * (len(importance) + 1))()
        for i, (name, values) in enumerate(sorted(importance.items())):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep += [arr, name.encode()]
            entries[i].name = keep[-1]
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(importance)].name = None
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(L.llama_model_imatrix_data))
        keep.append(entries)
    if metadata:
        kvs = (L.llama_model_kv_override * (len(metadata) + 1))()
        for i, (key, value) in enumerate(metadata.items()):
            kvs[i].key = key.encode()[:127]
            if isinstance(value, int):
                kvs[i].tag, kvs[i].value.val_i64 = L.LLAMA_KV_OVERRIDE_TYPE_INT, value
            else:
                kvs[i].tag, kvs[i].value.val_str = L.LLAMA_KV_OVERRIDE_TYPE_STR, str(value).encode()[:127]
        kvs[len(metadata)].key = b""
        params.kv_overrides = ctypes.cast(kvs, ctypes.POINTER(L.llama_model_kv_override))
        keep.append(kvs)
    return keep


def _discard(tmp: Path) -> None:
    """A failed conversion leaves nothing behind: its partial file, and its folder when now empty."""
    tmp.unlink(missing_ok=True)
    try:
        tmp.parent.rmdir()  # only if empty: other variants of the source stay
    except OSError:
        pass


def gguf_variant(src: Path, quant: str, cache_dir: Path) -> Path:
    """Path of ``src`` at quantization ``quant``, made once and cached under ``cache_dir``.

    Variants are made from an F16 copy of the source (itself cached), so every quant starts from
    the same weights: the source's own precision, never a quant of a quant.
    """
    if quant == GGUF_AS_FILE:
        return src
    own = gguf_file_type(src)
    if own == quant:
        return src
    beside = _checkpoint_f16_stem(src)
    if beside is not None:  # the F16 converted from a checkpoint: its variants go beside it
        target = src.parent / f"{beside}.{quant}.gguf"
        return target if target.exists() else quantize_gguf(src, target, quant)
    base = variants_folder(src, cache_dir)
    target = base / f"{src.stem}.{quant}.gguf"
    if target.exists():
        record_source(base, src, own)
        return target
    if quant in ("F16", "F32", "BF16") or own in ("F16", "F32", "BF16"):
        made = quantize_gguf(src, target, quant)
    else:
        f16 = gguf_variant(src, "F16", cache_dir)
        made = quantize_gguf(f16, target, quant)
    record_source(base, src, own)
    return made


def variants_folder(src: Path, cache_dir: Path) -> Path:
    """The folder holding ``src``'s variants (and their importance matrices)."""
    if _checkpoint_f16_stem(src) is not None:
        return src.parent
    return cache_dir / "gguf" / f"{src.stem}-{source_key(src)}"


def variant_stem(src: Path) -> str:
    """The name ``src``'s variants start with."""
    return _checkpoint_f16_stem(src) or src.stem


SOURCE_RECORD = "quantlab-source.json"


def _checkpoint_f16_stem(src: Path) -> str | None:
    """For ``<name>.F16.gguf`` that ``hf_to_gguf`` converted from a checkpoint (its folder's source
    record says so): ``<name>``; None for any other file."""
    if not src.name.endswith(".F16.gguf"):
        return None
    rec = source_of(src)
    return src.name[: -len(".F16.gguf")] if rec and rec.get("checkpoint") else None


def record_source(folder: Path, src: Path, own: str | None) -> None:
    """Note beside a source's variants which file they were made from and its type (read back by
    ``source_of``), so every place that shows a variant can say where it came from."""
    import json

    rec = folder / SOURCE_RECORD
    if not rec.exists():
        tmp = rec.with_name(rec.name + f".tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps({"source": str(src), "source_name": src.name, "source_type": own}))
        os.replace(tmp, rec)


def source_of(variant: Path) -> dict | None:
    """{source, source_name, source_type} of a variant this app made, None for any other file."""
    import json

    rec = variant.parent / SOURCE_RECORD
    try:
        return json.loads(rec.read_text())
    except (OSError, ValueError):
        return None


# Bytes per element of each KV cache type: ggml's block size / elements per block (ggml_type_size /
# ggml_blck_size; f16 2 bytes, q8_0 34 bytes per 32 values, q4_0 18 per 32). A test checks these
# against the engine's own ggml and the KV size llama.cpp reports when it allocates the cache.
KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def kv_cache_bytes(meta: dict, n_ctx: int, cache_type: str | None = None) -> int:
    """K and V for every layer at ``n_ctx`` tokens (KV cells), from the GGUF's metadata, in the
    cache type llama.cpp allocates (``None`` = f16, its default); 0 when the architecture's keys are
    missing. Per layer: n_ctx x (n_embd_k_gqa + n_embd_v_gqa) elements, as llama.cpp sizes it."""
    arch = meta.get("general.architecture", "llama")
    name = (cache_type or "f16").strip().lower()
    if name not in KV_BYTES_PER_ELEMENT:
        raise UnsupportedQuantization(f"Unknown KV cache type {cache_type!r}: choose one of "
                                      f"{', '.join(KV_BYTES_PER_ELEMENT)}.")
    try:
        n_layer = int(meta[f"{arch}.block_count"])
        n_embd = int(meta[f"{arch}.embedding_length"])
        n_head = int(meta[f"{arch}.attention.head_count"])
        n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
        head_k = int(meta.get(f"{arch}.attention.key_length", n_embd // max(n_head, 1)))
        head_v = int(meta.get(f"{arch}.attention.value_length", n_embd // max(n_head, 1)))
    except (KeyError, ValueError, TypeError):
        return 0
    return int(n_layer * n_ctx * n_head_kv * (head_k + head_v) * KV_BYTES_PER_ELEMENT[name])
