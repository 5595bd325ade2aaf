"""Importance matrices computed through the engine, with llama.cpp's own method, and the GGUF
variants quantized with them (``Q4_K_M+imatrix``).

The computation is ``llama-imatrix``'s (tools/imatrix/imatrix.cpp of the vendored llama.cpp), done
through the eval callback that llama.cpp's scheduler calls for every graph node (``cb_eval``): the
text is tokenized with BOS, cut into chunks of 512 tokens whose first token is BOS, each chunk is
decoded with every output on, and for each matrix multiplication by a ``blk.*`` weight over 16 or
more rows of F32 activations the squares of the activations are summed per input column (per expert
for ``MUL_MAT_ID``), with the number of rows summed. The result is written in the tool's own GGUF
format (backends/files/imatrix_file.py), so ``llama-quantize --imatrix`` reads it too; a test checks
it against the tool's on the same text where the tool is built.

Quantizing with it passes sums / counts per tensor to ``llama_model_quantize`` (its ``imatrix``
parameter, as ``llama-quantize`` does) and records ``quantize.imatrix.*`` in the file's metadata.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from backends.errors import Cancelled, InvalidRequest, ModelLoadError
from backends.files import gguf, imatrix_file
from backends.files.imatrix_file import CHUNK, ImatrixRecord

_MAX_SRC = 10


class _GgmlTensor(ctypes.Structure):
    """struct ggml_tensor of the vendored ggml.h (GGML_MAX_DIMS 4, GGML_MAX_SRC 10, GGML_MAX_NAME 64)."""
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * _MAX_SRC), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


def _ggml():
    from llama_cpp._ggml import libggml as lib

    lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    lib.ggml_nbytes.restype, lib.ggml_nbytes.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


def _weight_name(raw: bytes) -> str:
    """llama-imatrix's filter_tensor_name: "CUDA0#blk.0.attn_k.weight#0" -> "blk.0.attn_k.weight"."""
    name = raw.decode(errors="replace")
    if "#" in name:
        name = name.split("#", 1)[1].split("#", 1)[0]
    return name


class _Collector:
    """llama-imatrix's IMatrixCollector::collect_imatrix, in numpy (float64 sums, stored as float32)."""

    def __init__(self):
        self.lib = _ggml()
        self.ops: dict[int, str] = {}
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.error: BaseException | None = None

    def op(self, t: _GgmlTensor) -> str:
        if t.op not in self.ops:
            self.ops[t.op] = (self.lib.ggml_op_name(t.op) or b"").decode()
        return self.ops[t.op]

    def _array(self, ptr: int, t: _GgmlTensor, dtype) -> np.ndarray:
        nbytes = self.lib.ggml_nbytes(ptr)
        if t.buffer and self.lib.ggml_backend_buffer_is_host(t.buffer):
            raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(t.data))
        else:
            raw = np.empty(nbytes, dtype=np.uint8)
            self.lib.ggml_backend_tensor_get(ptr, raw.ctypes.data, 0, nbytes)
        shape = tuple(int(n) for n in t.ne[::-1])
        strides = tuple(int(n) for n in t.nb[::-1])
        return np.ndarray(shape, dtype=dtype, buffer=raw, strides=strides)  # [ne3, ne2, ne1, ne0]

    def __call__(self, ptr: int, ask: bool, _user) -> bool:
        try:
            return self._collect(ptr, ask)
        except BaseException as exc:  # never raise through C; reported after the decode
            self.error = self.error or exc
            return False

    def _collect(self, ptr: int, ask: bool) -> bool:
        t = _GgmlTensor.from_address(ptr)
        op = self.op(t)
        if op not in ("MUL_MAT", "MUL_MAT_ID") or not t.src[0] or not t.src[1]:
            return False
        src0 = _GgmlTensor.from_address(t.src[0])
        src1 = _GgmlTensor.from_address(t.src[1])
        name = _weight_name(src0.name)
        if ask:
            if op == "MUL_MAT_ID":
                return True
            return src1.ne[1] >= 16 and src1.type == 0 and name.startswith("blk.")
        x = self._array(t.src[1], src1, np.float32)
        ne0 = int(src1.ne[0])
        if op == "MUL_MAT_ID":
            ids_t = _GgmlTensor.from_address(t.src[2])
            ids = self._array(t.src[2], ids_t, np.int32)[0, 0]  # [n_tokens, n_ids]
            n_as = int(src0.ne[2])
            s = self.sums.setdefault(name, np.zeros((n_as, ne0)))
            c = self.counts.setdefault(name, np.zeros(n_as))
            xs = x[0]  # [n_tokens, ne1, ne0]
            for idx in range(ids.shape[1]):
                rows = xs[:, idx % xs.shape[1], :].astype(np.float64)
                np.add.at(s, ids[:, idx], rows * rows)
                np.add.at(c, ids[:, idx], 1)
            return True
        n_mat = int(src0.ne[2] * src0.ne[3])
        s = self.sums.setdefault(name, np.zeros((n_mat, ne0)))
        c = self.counts.setdefault(name, np.zeros(1))
        x64 = x.astype(np.float64)
        for i3 in range(x64.shape[0]):
            for i2 in range(x64.shape[1]):
                mat = (i3 % int(src0.ne[3])) * int(src0.ne[2]) + (i2 % int(src0.ne[2]))
                s[mat] += (x64[i3, i2] ** 2).sum(axis=0)
        c += x64.shape[0] * x64.shape[1] * x64.shape[2] // n_mat
        return True


def compute_imatrix(model_path: Path, text: str, chunk: int = CHUNK, n_threads: int | None = None,
                    n_gpu_layers: int | None = 0, progress: Callable[[float, str], None] = lambda f, m: None,
                    cancel: threading.Event | None = None) -> tuple[imatrix_file.Imatrix, int]:
    """(the importance matrix of ``model_path`` over ``text``, tokens scored): llama-imatrix's
    computation with ``-c chunk -b chunk -ub chunk``. At least two chunks of text, as the tool asks."""
    import llama_cpp as L

    from backends.llamacpp.open import open_llama

    threads = n_threads or max(1, os.cpu_count() or 1)
    if n_gpu_layers is None:  # the server's default: every layer on the GPU when the build has one
        n_gpu_layers = -1 if L.llama_supports_gpu_offload() else 0
    llm = open_llama(str(model_path), n_ctx=64, n_threads=threads, n_gpu_layers=n_gpu_layers, verbose=False)
    ctx = batch = None
    try:
        tokens = llm.tokenize(text.encode("utf-8", errors="replace"), add_bos=True, special=False)
        if len(tokens) < 2 * chunk:
            raise InvalidRequest(f"The calibration text is {len(tokens):,} tokens long; an importance matrix needs at "
                                 f"least {2 * chunk:,} (two chunks of {chunk}). Give a longer text.", "calibration")
        n_chunks = len(tokens) // chunk
        collector = _Collector()
        callback = L.ggml_backend_sched_eval_callback(collector)
        params = L.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = chunk
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads
        params.cb_eval = callback
        params.cb_eval_user_data = None
        ctx = L.llama_init_from_model(llm._model.model, params)
        if not ctx:
            raise ModelLoadError(f"llama.cpp could not make a context to compute the importance matrix of {model_path.name}.")
        batch = L.llama_batch_init(chunk, 0, 1)
        add_bos, bos = llm._model.add_bos_token(), llm.token_bos()
        for i in range(n_chunks):
            if cancel is not None and cancel.is_set():
                raise Cancelled("The importance matrix was stopped.")
            part = tokens[i * chunk:(i + 1) * chunk]
            if add_bos and bos >= 0:
                part = [bos, *part[1:]]
            batch.n_tokens = len(part)
            for k, tok in enumerate(part):
                batch.token[k], batch.pos[k], batch.n_seq_id[k] = tok, k, 1
                batch.seq_id[k][0], batch.logits[k] = 0, True
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            rc = L.llama_decode(ctx, batch)
            if collector.error is not None:
                raise ModelLoadError(f"Computing the importance matrix failed: {collector.error}") from collector.error
            if rc != 0:
                raise ModelLoadError(f"llama.cpp could not decode chunk {i + 1} of the calibration text (code {rc}).")
            progress((i + 1) / n_chunks, f"Importance matrix: chunk {i + 1}/{n_chunks}")
        sums = {k: v.reshape(len(collector.counts[k]), -1).astype(np.float32) for k, v in collector.sums.items()}
        counts = {k: v.astype(np.float32) for k, v in collector.counts.items()}
        return imatrix_file.Imatrix(sums, counts, [], n_chunks, chunk), n_chunks * chunk
    finally:
        if batch is not None:
            L.llama_batch_free(batch)
        if ctx:
            L.llama_free(ctx)
        llm.close()


def compute_and_store(src: Path, cache_dir: Path, text: str | None = None, calibration: str | None = None,
                      n_gpu_layers: int | None = 0, progress: Callable[[float, str], None] = lambda f, m: None,
                      cancel: threading.Event | None = None) -> tuple[Path, ImatrixRecord]:
    """The importance matrix of ``src``'s F16 over ``text`` (None: the built-in calibration text),
    cached beside its variants (the same text twice is computed once) and made the one its
    ``+imatrix`` variants use from now on."""
    name = calibration or imatrix_file.DEFAULT_CALIBRATION
    if text is None:
        text, name = imatrix_file.default_calibration_text(), imatrix_file.DEFAULT_CALIBRATION
    folder = gguf.variants_folder(src, cache_dir)
    sha = imatrix_file.text_sha(text)
    path = imatrix_file.imatrix_path(folder, name, sha)
    record = imatrix_file.read_record(path)
    if not (path.is_file() and record):
        progress(0.0, "Importance matrix: making the F16 reference weights")
        f16 = gguf.gguf_variant(src, "F16", cache_dir)
        im, tokens = compute_imatrix(f16, text, n_gpu_layers=n_gpu_layers, progress=progress, cancel=cancel)
        im.datasets = [name]
        imatrix_file.write_imatrix(path, im.sums, im.counts, im.datasets, im.chunk_count, im.chunk_size)
        record = ImatrixRecord(file=path.name, calibration=name, calibration_bytes=len(text.encode("utf-8", "replace")),
                               calibration_sha=sha, tokens=tokens, chunks=im.chunk_count, chunk_size=im.chunk_size,
                               method="engine", model=f16.name)
        imatrix_file.write_record(path, record)
    imatrix_file.set_current(path)
    return path, record


def imatrix_variant(src: Path, quant: str, cache_dir: Path, n_gpu_layers: int | None = 0,
                    progress: Callable[[float, str], None] = lambda f, m: None) -> Path:
    """``src`` at ``quant`` (a GGUF type) quantized from its F16 with its current importance matrix
    (the built-in calibration text's, computed first, when it has none); cached, named after the
    imatrix file so a new calibration makes new variants."""
    if quant not in gguf.GGUF_FTYPES or quant in ("F16", "F32", "BF16"):
        raise InvalidRequest(f"{quant}{imatrix_file.IMATRIX_MARK}: an importance matrix is for quantized GGUF types "
                             "(Q2_K, Q3_K_M, Q4_K_M, IQ4_XS ...), not F16/BF16/F32.", "quantization")
    folder = gguf.variants_folder(src, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    gguf.record_source(folder, src, gguf.gguf_file_type(src))  # provenance names the source
    current = imatrix_file.current(folder)
    if current is None:
        current, _ = compute_and_store(src, cache_dir, n_gpu_layers=n_gpu_layers, progress=progress)
    stem = gguf.variant_stem(src)
    target = folder / f"{stem}.{quant}.imatrix-{imatrix_file.file_sha(current)}.gguf"
    if target.exists():
        return target
    record = imatrix_file.read_record(current)
    f16 = gguf.gguf_variant(src, "F16", cache_dir)
    im = imatrix_file.read_imatrix(current)
    progress(0.3, f"Quantizing {quant} with the importance matrix")
    meta = {"quantize.imatrix.file": current.name,
            "quantize.imatrix.dataset": (record.calibration if record else (im.datasets or ["?"])[0]),
            "quantize.imatrix.entries_count": len(im.sums), "quantize.imatrix.chunks_count": im.chunk_count}
    return gguf.quantize_gguf(f16, target, quant, importance=im.importance(), metadata=meta)
