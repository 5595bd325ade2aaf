"""The figures the Monitor tab and ``/stats`` show: memory (process, system, GPUs, the models held)
and the latency of the last requests, from samples and records already taken (no measuring here)."""

from __future__ import annotations

from typing import Any

from backends.manager import ModelManager
from backends.files.provenance import provenance
from monitoring.memory import MemoryMonitor
from monitoring.model_memory import MEMORY_LEGEND, model_memory


def model_view(info: Any) -> dict:
    """A held model as every tab shows it: its fields, its memory (one definition: weights + KV +
    overhead) and where it came from."""
    d = info.as_dict()
    d["memory"] = model_memory(d)
    d["provenance"] = provenance(d.get("source"), d.get("quantization", "")) if d.get("footprint_bytes") else None
    return d


def percentile(values: list[float], p: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def stats(manager: ModelManager, monitor: MemoryMonitor | None, last: int = 50) -> dict:
    recent = [s.as_dict() for s in manager.metrics.recent(last)]
    done = [r for r in recent if r["outcome"] == "ok"]
    cur = manager.current
    return {
        "memory": monitor.latest() if monitor else None,
        "model": model_view(cur) if cur else None,
        "lab_models": [model_view(info) for info in manager.leased()],
        "memory_legend": MEMORY_LEGEND,
        "state": manager.state,
        "requests": {
            "running": manager.metrics.running,
            "waiting": manager.metrics.waiting,
            "total": manager.metrics.total,
            "ttft_p50_s": percentile([r["ttft_s"] for r in done if r["ttft_s"] is not None], 50),
            "tpot_p50_s": percentile([r["tpot_s"] for r in done if r["tpot_s"] is not None], 50),
            "tokens_per_s_p50": percentile([r["tokens_per_s"] for r in done if r["tokens_per_s"]], 50),
        },
        "recent": recent,
    }
