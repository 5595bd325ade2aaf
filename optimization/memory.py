"""Memory and CPU: measure the process and the GPUs, sample them over time, and give freed memory
back to the OS.

Without a GPU or NVML every GPU figure says so plainly (``available: False`` and the reason); there
are no made-up numbers. torch is never imported here: its CUDA figures are read only if the app
already imported it (a transformers model is loaded).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import threading
import time
from collections import deque


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


class GpuProbe:
    """NVML (nvidia-ml-py) per-device figures, initialised once; says why when unavailable."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._nvml = None
        self._handles: list = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            if not self._handles:
                self.reason = "NVML found no GPU"
        except ImportError:
            self.reason = "nvidia-ml-py is not installed"
        except Exception as exc:  # pynvml.NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.reason = f"no NVIDIA GPU/driver ({type(exc).__name__})"

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def devices(self) -> list[dict]:
        out = []
        nv = self._nvml
        for i, h in enumerate(self._handles):
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                util = nv.nvmlDeviceGetUtilizationRates(h)
                name = nv.nvmlDeviceGetName(h)
                out.append({
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "used_bytes": int(mem.used),
                    "total_bytes": int(mem.total),
                    "utilization_percent": int(util.gpu),
                })
            except Exception as exc:  # a device fell off the bus: report, don't crash
                out.append({"index": i, "error": str(exc)})
        return out


def torch_cuda_memory() -> list[dict]:
    """torch's own view (allocated/reserved/peak) where torch is loaded and sees CUDA."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    try:
        if not torch.cuda.is_available():
            return []
        return [{
            "index": i,
            "allocated_bytes": int(torch.cuda.memory_allocated(i)),
            "reserved_bytes": int(torch.cuda.memory_reserved(i)),
            "peak_allocated_bytes": int(torch.cuda.max_memory_allocated(i)),
        } for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return []


class MemoryMonitor:
    """Samples process, system and GPU figures every ``interval`` seconds in one daemon thread,
    keeping the last ``keep`` samples for the charts. Reading is cheap: the UI and /stats never
    trigger a measurement of their own."""

    def __init__(self, interval: float = 1.0, keep: int = 600):
        import psutil

        self.interval = interval
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # prime: the first call always returns 0.0
        self.gpu = GpuProbe()
        self.samples: deque[dict] = deque(maxlen=keep)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sample(self) -> dict:
        import psutil

        with self._lock:  # psutil's cpu_percent keeps state between calls
            mi = self._proc.memory_info()
            vm = psutil.virtual_memory()
            snap = {
                "time": time.time(),
                "process": {
                    "rss_bytes": int(mi.rss),
                    "cpu_percent": self._proc.cpu_percent(None),
                    "threads": self._proc.num_threads(),
                },
                "system": {
                    "total_bytes": int(vm.total),
                    "available_bytes": int(vm.available),
                    "cpu_count": psutil.cpu_count(),
                },
                "gpu": {"available": self.gpu.available, "reason": self.gpu.reason,
                        "devices": self.gpu.devices(), "torch": torch_cuda_memory()},
            }
            self.samples.append(snap)
            return snap

    def latest(self) -> dict:
        return self.samples[-1] if self.samples else self.sample()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def run():
            while not self._stop.is_set():
                self.sample()
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=run, name="memory-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def rss(self) -> int:
        return int(self._proc.memory_info().rss)


# --- estimates before loading ---------------------------------------------------------------------

# Bits per weight of each quantization, averaged over a typical model (the quantized tensors plus the
# few that every quant keeps at higher precision). Used only to estimate before a load; the measured
# footprint is shown beside it after.
BITS_PER_WEIGHT = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7, "Q5_K_S": 5.5,
    "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4_NL": 4.5,
    "IQ4_XS": 4.3, "Q3_K_L": 4.3, "Q3_K_M": 3.9, "Q3_K_S": 3.5, "Q2_K": 3.4,
    "fp32": 32.0, "bf16": 16.0, "fp16": 16.0, "int8": 9.0, "nf4": 4.8, "fp4": 4.8,
}
OVERHEAD_BYTES = 64 * 2**20  # runtime buffers, scratch, the tokenizer


def kv_cache_bytes(meta: dict, n_ctx: int) -> int:
    """f16 K and V for every layer at ``n_ctx`` (what llama.cpp allocates by default)."""
    arch = meta.get("general.architecture", "llama")
    try:
        n_layer = int(meta[f"{arch}.block_count"])
        n_embd = int(meta[f"{arch}.embedding_length"])
        n_head = int(meta[f"{arch}.attention.head_count"])
        n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    except (KeyError, ValueError):
        return 0
    head_dim = n_embd // max(n_head, 1)
    return 2 * n_layer * n_ctx * n_head_kv * head_dim * 2


def estimate_model_bytes(n_params: int, quantization: str, kv_bytes: int = 0) -> int:
    bpw = BITS_PER_WEIGHT.get(quantization)
    if bpw is None:
        raise KeyError(quantization)
    return int(n_params * bpw / 8) + kv_bytes + OVERHEAD_BYTES


def fits(needed_bytes: int, on_gpu: bool = False, monitor: MemoryMonitor | None = None) -> tuple[bool, int]:
    """(fits, free bytes) against free RAM (or the first GPU's free memory)."""
    import psutil

    if on_gpu and monitor is not None and monitor.gpu.available:
        dev = monitor.gpu.devices()[0]
        free = dev["total_bytes"] - dev["used_bytes"]
    else:
        free = psutil.virtual_memory().available
    return needed_bytes <= int(free * 0.9), free
