"""Memory: measure the process and the GPUs, and give freed memory back to the OS.

Without a GPU or NVML every GPU figure says so plainly (``available: False`` and a reason); there
are no made-up numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
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


def process_memory() -> dict:
    import psutil

    p = psutil.Process(os.getpid())
    mi = p.memory_info()
    vm = psutil.virtual_memory()
    return {
        "rss_bytes": mi.rss,
        "system_total_bytes": vm.total,
        "system_available_bytes": vm.available,
    }
