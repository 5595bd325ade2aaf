"""Construct ``llama_cpp.Llama`` objects safely on every CPU.

llama.cpp puts weights in "extra" CPU buffer types when the CPU has them. On CPUs with Intel AMX
(Sapphire Rapids and later) that selects the AMX matmul kernels, and the llama.cpp vendored by the
pinned llama-cpp-python crashes in ``ggml_backend_amx_mul_mat`` on the first prompt (a segfault that
takes the whole server down). ``Llama()`` has no argument for it, so the model parameters'
``use_extra_bufts`` is switched off while the object is built, on AMX CPUs only: elsewhere the extra
buffers (weight repacking) stay on.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from pathlib import Path

_BUILD_LOCK = threading.Lock()  # the override below is process-wide while a model is being built


@functools.cache
def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(f.startswith("amx") for f in flags)


@contextlib.contextmanager
def model_params_override(**fields) -> Iterator[None]:
    """Within the block, ``llama_model_default_params()`` (what ``Llama.__init__`` starts from) returns
    params with ``fields`` set."""
    import llama_cpp.llama_cpp as C

    with _BUILD_LOCK:
        original = C.llama_model_default_params
        C.llama_model_default_params = _with_fields(original, fields)
        try:
            yield
        finally:
            C.llama_model_default_params = original


def safe_model_params() -> dict:
    """The model-parameter fields this CPU needs (empty where the defaults are safe)."""
    return {"use_extra_bufts": False} if cpu_has_amx() else {}


def open_llama(model_path: str, flash_attn: bool | str = False, **kwargs):
    """``llama_cpp.Llama(model_path, **kwargs)`` with the safe model parameters for this CPU.
    ``flash_attn``: True/"on", False/"off", or "auto" (llama.cpp's own choice, as llama-server's
    ``-fa auto``: on wherever the attention's device supports it, which the CPU always does)."""
    from llama_cpp import Llama

    mode = flash_attn_mode(flash_attn)
    with model_params_override(**safe_model_params()), _flash_attn_auto(mode == "auto"):
        return Llama(model_path=model_path, flash_attn=mode != "off", **kwargs)


def flash_attn_mode(value) -> str:
    """A spec's or a caller's flash-attention setting as "auto", "on" or "off" (None: auto)."""
    from backends.options import parse_flash_attn

    return parse_flash_attn(value) or "auto"


@contextlib.contextmanager
def _flash_attn_auto(auto: bool) -> Iterator[None]:
    """Within the block, ``Llama(flash_attn=True)`` asks llama.cpp for LLAMA_FLASH_ATTN_TYPE_AUTO (its
    context then resolves it per device) instead of ENABLED: ``Llama()`` only takes a bool. The batch
    engine's and the embedder's contexts copy the params, so they resolve it alike. Called with the
    build lock held (``model_params_override``)."""
    if not auto:
        yield
        return
    import llama_cpp.llama_cpp as C

    enabled = C.LLAMA_FLASH_ATTN_TYPE_ENABLED
    C.LLAMA_FLASH_ATTN_TYPE_ENABLED = C.LLAMA_FLASH_ATTN_TYPE_AUTO
    try:
        yield
    finally:
        C.LLAMA_FLASH_ATTN_TYPE_ENABLED = enabled


def kv_cache_options(spec) -> dict:
    """Llama() arguments (for ``open_llama``) for the spec's KV cache type and flash attention
    ("auto" unless the spec says on or off): a quantized V cache needs flash attention in llama.cpp,
    so it is switched on for one."""
    import llama_cpp

    from backends.base import KV_CACHE_TYPES
    from backends.errors import InvalidRequest

    opts: dict = {"flash_attn": flash_attn_mode(spec.flash_attn)}
    name = (spec.cache_type or "f16").strip().lower()
    if name not in KV_CACHE_TYPES:
        raise InvalidRequest(f"cache_type must be one of {', '.join(KV_CACHE_TYPES)}, got {spec.cache_type!r}.",
                             "cache_type")
    if name != "f16":
        ggml_type = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}")
        opts.update(type_k=ggml_type, type_v=ggml_type, flash_attn="on")
    return opts


def flash_attn_shown(llm, mode: str) -> str:
    """What a loaded model's details say about flash attention: "on", "off", or "auto: on" where the
    context asked llama.cpp to choose and every layer computes on the CPU (which always supports it;
    on a GPU llama.cpp decides per device and logs its choice: "auto")."""
    if mode != "auto":
        return mode
    import llama_cpp.llama_cpp as C

    on_cpu = not C.llama_supports_gpu_offload() or llm.model_params.n_gpu_layers == 0
    return "auto: on" if on_cpu else "auto"


def patch_for_this_process() -> None:
    """For a process that builds its own Llama objects (llama-cpp-python's server in the tests and
    the raw-engine benchmark): apply the safe parameters for good."""
    import llama_cpp.llama_cpp as C

    fields = safe_model_params()
    if fields:
        C.llama_model_default_params = _with_fields(C.llama_model_default_params, fields)


def _with_fields(default_params, fields: dict):
    def patched():
        params = default_params()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    return patched
