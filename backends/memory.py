"""Give a freed model's memory back: garbage, the CUDA cache, and glibc's heap."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys


def release_memory() -> None:
    """Collect garbage, empty the CUDA cache, and return free heap pages to the OS.

    glibc keeps freed small and medium blocks (most tensors of a small model) in its arenas, so
    without ``malloc_trim`` an unloaded model still shows in RSS."""
    gc.collect()
    try:
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - a broken CUDA setup must not break unload
        pass
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim(0)
        except (OSError, AttributeError):  # musl and others have no malloc_trim
            pass
