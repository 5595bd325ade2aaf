"""The one definition of a loaded model's memory, shown alike by the Model tab, Compare, Evaluate,
the Monitor and ``/stats``:

    total = weights + KV cache (at the loaded context x slots) + runtime overhead

- weights: the bytes the engine holds for the tensors (llama.cpp's model size; transformers'
  ``get_memory_footprint``), measured after the load;
- KV cache: what the engine allocated for keys and values, for ``n_ctx`` tokens in each of
  ``slots`` sequences (so the same variant loaded with another context or slot count has another KV);
- overhead: compute buffers and scratch, not reported by the engines: a fixed estimate (measured
  as RSS growth beyond weights + KV on the embedded model: 30-50 MiB).
"""

from __future__ import annotations

from typing import Any

OVERHEAD_BYTES = {"llamacpp": 48 * 2**20, "transformers": 64 * 2**20, "remote": 0}
DEFAULT_OVERHEAD = 64 * 2**20

MEMORY_LEGEND = ("Memory = weights + KV cache (context x slots, as loaded) + runtime overhead (compute buffers, "
                 "an estimate); measured after the load, the same figure in every tab and /stats.")


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def model_memory(info: Any) -> dict:
    """{weights_bytes, kv_bytes, overhead_bytes, total_bytes, *_mib, n_ctx, slots, kv_type} of a
    LoadedModel (or its ``as_dict()``)."""
    d = info if isinstance(info, dict) else info.as_dict()
    footprint = int(d.get("footprint_bytes") or 0)
    backend = d.get("backend", "")
    if not footprint:  # a remote engine: its memory is not ours to see
        w = kv = over = 0
    else:
        w = int(d.get("weights_bytes") or 0)
        kv = int(d["kv_cache_bytes"]) if d.get("kv_cache_bytes") is not None else max(footprint - w, 0)
        if not w:
            w = max(footprint - kv, 0)
        over = OVERHEAD_BYTES.get(backend, DEFAULT_OVERHEAD)
    total = w + kv + over
    return {
        "weights_bytes": w, "kv_bytes": kv, "overhead_bytes": over, "total_bytes": total,
        "weights_mib": _mib(w), "kv_mib": _mib(kv), "overhead_mib": _mib(over), "total_mib": _mib(total),
        "n_ctx": d.get("n_ctx") or d.get("context_length"), "slots": d.get("parallel") or 1,
        "kv_type": d.get("kv_cache_type") or "f16",
    }


def memory_line(mem: dict) -> str:
    """ "181.4 MiB = 136.4 weights + 45.0 KV (2048 ctx x 1 slot) + 48.0 overhead" """
    if not mem["total_bytes"]:
        return "memory not visible (remote engine)"
    slots = mem["slots"]
    kv_type = "" if mem.get("kv_type", "f16") == "f16" else f" {mem['kv_type']}"  # a quantized KV cache says so
    return (f"{mem['total_mib']:,.1f} MiB = {mem['weights_mib']:,.1f} weights + {mem['kv_mib']:,.1f} KV{kv_type} "
            f"({mem['n_ctx']} ctx x {slots} slot{'s' if slots != 1 else ''}) + {mem['overhead_mib']:,.1f} overhead")
