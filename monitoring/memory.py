"""Memory and CPU: measure the process and the GPUs and sample them over time.

Without a GPU or NVML every GPU figure says so plainly (``available: False`` and the reason); there
are no made-up numbers. torch is never imported here: its CUDA figures are read only if the app
already imported it (a transformers model is loaded).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque


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

    def __init__(self, interval: float = 1.0, keep: int = 600, pid: int | None = None):
        """``pid``: the process to watch (default: this one; the benchmark watches a server it started)."""
        import psutil

        self.interval = interval
        self.pid = os.getpid() if pid is None else pid
        self._proc = psutil.Process(self.pid)
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
