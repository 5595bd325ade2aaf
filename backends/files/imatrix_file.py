"""Importance matrices on disk, in llama.cpp's own GGUF format (what ``llama-imatrix`` writes and
``llama-quantize --imatrix`` reads): per weight tensor ``<name>.in_sum2`` (the sum of the squared
activations entering it, one row per expert) and ``<name>.counts`` (how many activation rows went
into each sum), with ``general.type = imatrix``, ``imatrix.datasets``, ``imatrix.chunk_count`` and
``imatrix.chunk_size``. No engine is imported here: the engine computes (backends/llamacpp/imatrix.py),
this file reads, writes, names and caches.

Where they live: ``<folder of a source's variants>/imatrix/<calibration>-<hash>.gguf``, with a JSON
record beside it (calibration text's name, bytes, tokens, chunks, how it was computed) and
``current.json`` naming the one that ``+imatrix`` variants of that source use.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from backends.errors import ModelLoadError
from backends.files.docstrings import docstring_text

IMATRIX_MARK = "+imatrix"  # "Q4_K_M+imatrix": that GGUF type quantized with the source's importance matrix
CHUNK = 512  # llama-imatrix's default context (tokens per chunk)
DEFAULT_CALIBRATION = "built-in"  # the calibration text's name when the user gives none

# The built-in calibration text: docstrings of standard-library modules that the quality meter's
# default EVALUATION text (optimization/quality.py STDLIB_MODULES) never reads, so the KLD an imatrix
# buys is measured on text it was not computed from.
CALIBRATION_MODULES = ("os", "re", "typing", "inspect", "ast", "asyncio", "threading", "subprocess", "socket",
                       "urllib.parse", "email.message", "unittest", "enum", "copy", "pprint", "random", "struct",
                       "zipfile", "tarfile", "sqlite3", "configparser", "optparse", "locale", "gettext")


def split_quant(quant: str) -> tuple[str, bool]:
    """("Q4_K_M", True) for "Q4_K_M+imatrix", (quant, False) otherwise."""
    q = str(quant or "")
    if q.lower().endswith(IMATRIX_MARK):
        return q[: -len(IMATRIX_MARK)], True
    return q, False


def default_calibration_text(max_chars: int = 40_000) -> str:
    return docstring_text(CALIBRATION_MODULES, max_chars)


@dataclass
class ImatrixRecord:
    """Where an importance matrix came from (shown as provenance, kept beside it as JSON)."""
    file: str  # the imatrix GGUF's name, in the same folder
    calibration: str  # the calibration text's file name, or "built-in"
    calibration_bytes: int
    calibration_sha: str  # first 12 hex of the text's sha1
    tokens: int  # tokens scored (whole chunks)
    chunks: int
    chunk_size: int
    method: str  # "engine" (this app, through llama.cpp's eval callback) or "llama-imatrix"
    model: str  # the GGUF it was computed on

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"importance matrix from {self.calibration} ({self.calibration_bytes:,} bytes, {self.tokens:,} tokens "
                f"in {self.chunks} chunks of {self.chunk_size}; {self.method})")


def text_sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", errors="replace")).hexdigest()[:12]


def imatrix_dir(variants_folder: Path) -> Path:
    return variants_folder / "imatrix"


def imatrix_path(variants_folder: Path, calibration: str, sha: str, chunk: int = CHUNK) -> Path:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(calibration).stem)[:40] or "text"
    return imatrix_dir(variants_folder) / f"{stem}-{sha}-c{chunk}.gguf"


def read_record(imatrix: Path) -> ImatrixRecord | None:
    try:
        return ImatrixRecord(**json.loads(imatrix.with_suffix(".json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_record(imatrix: Path, record: ImatrixRecord) -> None:
    _atomic_write(imatrix.with_suffix(".json"), json.dumps(record.as_dict(), indent=1).encode())


def current(variants_folder: Path) -> Path | None:
    """The imatrix that ``+imatrix`` variants of this source use now (the last one computed)."""
    try:
        name = json.loads((imatrix_dir(variants_folder) / "current.json").read_text())["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = imatrix_dir(variants_folder) / Path(name).name
    return path if path.is_file() else None


def set_current(imatrix: Path) -> None:
    _atomic_write(imatrix.parent / "current.json", json.dumps({"file": imatrix.name}).encode())


def file_sha(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:8]


# --- llama.cpp's imatrix GGUF --------------------------------------------------------------------

GGUF_ALIGN = 32
_T_U32, _T_STRING, _T_ARRAY = 4, 8, 9


def write_imatrix(path: Path, sums: dict[str, np.ndarray], counts: dict[str, np.ndarray], datasets: list[str],
                  chunk_count: int, chunk_size: int) -> None:
    """Write llama.cpp's GGUF imatrix: ``sums[name]`` float32 (n_mat, ne0), ``counts[name]`` (n_mat,),
    tensors sorted by name as llama-imatrix sorts them."""
    tensors = []
    for name in sorted(sums):
        s = np.ascontiguousarray(sums[name], dtype=np.float32).reshape(len(counts[name]), -1)
        c = np.ascontiguousarray(counts[name], dtype=np.float32).reshape(-1, 1)
        tensors += [(f"{name}.in_sum2", s), (f"{name}.counts", c)]

    def gstr(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    kv = [gstr("general.type") + struct.pack("<I", _T_STRING) + gstr("imatrix"),
          gstr("imatrix.datasets") + struct.pack("<IIQ", _T_ARRAY, _T_STRING, len(datasets))
          + b"".join(gstr(d) for d in datasets),
          gstr("imatrix.chunk_count") + struct.pack("<II", _T_U32, chunk_count),
          gstr("imatrix.chunk_size") + struct.pack("<II", _T_U32, chunk_size)]
    infos, offset = [], 0
    for name, arr in tensors:
        ne = arr.shape[::-1]  # ggml's ne[0] is the innermost dimension
        infos.append(gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
                     + struct.pack("<IQ", 0, offset))
        offset += _pad(arr.nbytes)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv) + b"".join(infos)
    body = bytearray(head + b"\0" * (_pad(len(head)) - len(head)))
    for _, arr in tensors:
        raw = arr.tobytes()
        body += raw + b"\0" * (_pad(len(raw)) - len(raw))
    _atomic_write(path, bytes(body))


def _pad(n: int) -> int:
    return (n + GGUF_ALIGN - 1) // GGUF_ALIGN * GGUF_ALIGN


@dataclass
class Imatrix:
    sums: dict[str, np.ndarray]  # name -> (n_mat, ne0) float32
    counts: dict[str, np.ndarray]  # name -> (n_mat,)
    datasets: list[str]
    chunk_count: int
    chunk_size: int

    def importance(self) -> dict[str, np.ndarray]:
        """What llama-quantize passes to the quantizer: sums / counts per matrix (1 where never counted)."""
        out = {}
        for name, s in self.sums.items():
            c = self.counts[name].reshape(-1, 1).astype(np.float32)
            out[name] = np.where(c > 0, s / np.where(c > 0, c, 1), 1.0).astype(np.float32).ravel()
        return out


def read_imatrix(path: Path) -> Imatrix:
    """Read a GGUF imatrix (this app's or llama-imatrix's)."""
    try:
        return _read_imatrix(path)
    except (OSError, struct.error, EOFError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path.name} is not an importance matrix llama.cpp can read: {exc}") from exc


def _read_imatrix(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return vals[0] if len(vals) == 1 else vals

    def gstr() -> str:
        n = take("<Q")
        nonlocal pos
        s = data[pos:pos + n].decode()
        pos += n
        return s

    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def value(t: int):
        if t == _T_STRING:
            return gstr()
        if t == _T_ARRAY:
            it, n = take("<IQ")
            return [value(it) for _ in range(n)]
        return take(scalar[t])

    if data[:4] != b"GGUF":
        raise ValueError("no GGUF magic")
    pos = 4
    _version, n_tensors, n_kv = take("<IQQ")
    meta = {}
    for _ in range(n_kv):
        key = gstr()
        meta[key] = value(take("<I"))
    if meta.get("general.type") != "imatrix":
        raise ValueError("general.type is not imatrix")
    align = int(meta.get("general.alignment", GGUF_ALIGN))
    infos = []
    for _ in range(n_tensors):
        name = gstr()
        nd = take("<I")
        ne = [take("<Q") for _ in range(nd)]
        ttype, off = take("<IQ")
        if ttype != 0:
            raise ValueError(f"tensor {name} is not F32")
        infos.append((name, ne, off))
    start = (pos + align - 1) // align * align
    arrays = {}
    for name, ne, off in infos:
        n = int(np.prod(ne))
        arrays[name] = np.frombuffer(data, dtype=np.float32, count=n, offset=start + off).reshape(ne[::-1])
    sums = {k[: -len(".in_sum2")]: v.copy() for k, v in arrays.items() if k.endswith(".in_sum2")}
    counts = {k: arrays[f"{k}.counts"].ravel().copy() for k in sums}
    return Imatrix(sums, counts, list(meta.get("imatrix.datasets") or []), int(meta.get("imatrix.chunk_count", 0)),
                   int(meta.get("imatrix.chunk_size", 0)))


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
