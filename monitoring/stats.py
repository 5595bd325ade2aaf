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
    overhead; ``memory_mib`` is its total, the number every surface shows) and where it came from.
    The engine's raw measurement (weights + KV, ``footprint_*``) is left out: shown beside the
    total it read as a second, contradicting memory figure."""
    d = one_memory(info.as_dict())
    d["provenance"] = (provenance(d.get("source"), d.get("quantization", ""), projector=d.get("projector"))
                       if d["memory"]["total_bytes"] else None)
    return d


def one_memory(d: dict) -> dict:
    """A model's dict (``LoadedModel.as_dict()``) with ``memory`` (``model_memory``) and ``memory_mib``
    in place of the engine's raw ``footprint_bytes`` / ``footprint_mib``."""
    d = dict(d)
    mem = model_memory(d)
    d.pop("footprint_bytes", None)
    d.pop("footprint_mib", None)
    d["memory"], d["memory_mib"] = mem, mem["total_mib"]
    return d


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def memory_account(manager: ModelManager, monitor: MemoryMonitor | None) -> dict:
    """One memory account, in MiB: a row per model in memory (the chat's, the pool's, the lab's,
    replaced ones finishing replies) with its memory by the one definition (``model_memory``:
    weights + KV + overhead), their sum, and what the process holds beyond them (RSS minus the
    models and the host prompt cache, which has its own line: Python, Gradio, other caches), so the rows
    and those lines add up to RSS. A model on a GPU is
    counted in GPU memory rather than RSS: the sum is set against both."""
    rows = []
    for role, info in manager.held_by_role():
        mem = model_memory(info)
        rows.append({"name": info.name, "role": role, "quantization": info.quantization, "device": info.device,
                     "memory_mib": mem["total_mib"], "memory": mem})
    models = sum(r["memory"]["total_bytes"] for r in rows)
    caches = manager.cache_bytes()
    snap = monitor.latest() if monitor else None
    rss = snap["process"]["rss_bytes"] if snap else None
    gpu = [d["used_bytes"] for d in snap["gpu"]["devices"] if "used_bytes" in d] if snap else []
    return {"models": rows, "models_bytes": models, "rss_bytes": rss, "prompt_cache_bytes": caches,
            "models_mib": _mib(models), "rss_mib": _mib(rss) if rss is not None else None,
            "prompt_cache_mib": _mib(caches),
            "process_other_mib": _mib(rss - models - caches) if rss is not None else None,
            "gpu_used_mib": _mib(sum(gpu)) if gpu else None}


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
        "pool_models": [model_view(info) for info in manager.pool_models()],
        "memory_account": memory_account(manager, monitor),
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
