"""Memory estimates made before a load (from file sizes, headers and bits per weight), and whether
they fit the free memory (RAM, or the GPU's when the load goes there) or a configured budget."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from backends.files import gguf
from backends.errors import OutOfMemory
from monitoring.memory import MemoryMonitor

# Bits per weight of each quantization, averaged over a typical model (the quantized tensors plus the
# few that every quant keeps at higher precision). Used only to estimate before a load; the measured
# footprint is shown beside it after.
BITS_PER_WEIGHT = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7, "Q5_K_S": 5.5,
    "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4_NL": 4.5,
    "IQ4_XS": 4.3, "Q3_K_L": 4.3, "Q3_K_M": 3.9, "Q3_K_S": 3.5, "Q2_K": 3.4,
    "fp32": 32.0, "bf16": 16.0, "fp16": 16.0, "int8": 9.0, "nf4": 4.8, "fp4": 4.8,
    "torchao-int8wo": 8.5, "quanto-int8": 8.5, "torchao-int4wo": 4.8, "quanto-int4": 4.8,
}
OVERHEAD_BYTES = 64 * 2**20  # runtime buffers, scratch, the tokenizer


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


# --- a load's estimate, checked before /load_model touches anything -------------------------------

KV_ELEMENT_BYTES_HF = {"fp32": 4}  # transformers keeps K/V in its compute dtype: 2 bytes unless fp32
_SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                            "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class LoadEstimate:
    """What a load is expected to take: weights + KV cache (n_ctx x slots) + overhead."""

    weights: int
    kv: int
    overhead: int
    n_ctx: int
    slots: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.overhead

    def line(self) -> str:
        mib = lambda n: f"{n / 2**20:,.0f}"  # noqa: E731
        return (f"about {mib(self.total)} MiB = {mib(self.weights)} weights + {mib(self.kv)} KV cache "
                f"({self.n_ctx} ctx x {self.slots} slot{'s' if self.slots != 1 else ''}) + {mib(self.overhead)} overhead")


def estimate_load(path: Path, quantization: str | None, n_ctx: int, slots: int, kv_type: str | None = None) -> LoadEstimate | None:
    """The estimate for loading the GGUF file or checkpoint folder at ``path`` at ``quantization``
    with ``slots`` KV caches of ``n_ctx`` tokens; None when the files do not say (no metadata)."""
    cells = n_ctx * slots
    if path.is_file() and path.suffix == ".gguf":
        meta = gguf.read_gguf_metadata(path)
        size = path.stat().st_size
        own = gguf.GGUF_NAMES_BY_FTYPE.get(int(meta["general.file_type"])) if "general.file_type" in meta else None
        weights = size
        if quantization in BITS_PER_WEIGHT and quantization != own and own in BITS_PER_WEIGHT:
            weights = int(size * BITS_PER_WEIGHT[quantization] / BITS_PER_WEIGHT[own])
        kv = gguf.kv_cache_bytes(meta, cells, kv_type if kv_type in gguf.KV_BYTES_PER_ELEMENT else None)
        return LoadEstimate(weights, kv, OVERHEAD_BYTES, n_ctx, slots)
    if path.is_dir() and (path / "config.json").is_file():
        n_params = _safetensors_params(path)
        if not n_params:
            return None
        weights = int(n_params * BITS_PER_WEIGHT.get(quantization or "", 16.0) / 8)
        kv = _config_kv_bytes(path / "config.json", cells, KV_ELEMENT_BYTES_HF.get(quantization or "", 2))
        return LoadEstimate(weights, kv, OVERHEAD_BYTES, n_ctx, slots)
    return None


def _safetensors_params(folder: Path) -> int:
    """Parameter count from the safetensors headers (shapes and dtypes; no tensor is read)."""
    total = 0
    for f in sorted(folder.glob("*.safetensors"))[:200]:
        try:
            with f.open("rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                if n > 100 * 2**20:
                    return 0
                header = json.loads(fh.read(n))
        except (OSError, struct.error, ValueError):
            return 0
        for name, t in header.items():
            if name != "__metadata__" and isinstance(t, dict):
                count = 1
                for dim in t.get("shape") or []:
                    count *= int(dim)
                total += count
    return total


def _config_kv_bytes(config: Path, cells: int, element_bytes: int) -> int:
    try:
        c = json.loads(config.read_text())
        c = c.get("text_config", c) if isinstance(c.get("text_config"), dict) else c
        layers, heads = int(c["num_hidden_layers"]), int(c["num_attention_heads"])
        kv_heads = int(c.get("num_key_value_heads") or heads)
        head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return 0
    return layers * cells * kv_heads * head_dim * 2 * element_bytes


def free_memory(on_gpu: bool, monitor: MemoryMonitor | None, all_gpus: bool = False) -> tuple[int, str]:
    """(free bytes, where): the GPU's free memory when the load goes to the GPU (every GPU's with a
    device map that spreads), else the RAM the OS says is available."""
    import psutil

    if on_gpu and monitor is not None and monitor.gpu.available:
        devs = [d for d in monitor.gpu.devices() if "total_bytes" in d]
        if devs:
            devs = devs if all_gpus else devs[:1]
            return sum(d["total_bytes"] - d["used_bytes"] for d in devs), "free GPU memory"
    return int(psutil.virtual_memory().available), "available RAM"


def check_load_fits(estimate: LoadEstimate, *, on_gpu: bool, monitor: MemoryMonitor | None = None,
                    all_gpus: bool = False, budget_bytes: int = 0, held_bytes: int = 0) -> None:
    """OutOfMemory, saying the estimate, the free memory and what to lower, when ``estimate`` does
    not fit in 90% of the free memory, or (with a budget) in the budget less the models held (the
    model loaded now stays loaded until the new one is ready, so it counts)."""
    free, where = free_memory(on_gpu, monitor, all_gpus)
    room, what = int(free * 0.9), f"{free / 2**20:,.0f} MiB {where} (90% of it usable)"
    if budget_bytes:
        left = max(budget_bytes - held_bytes, 0)
        if left < room:
            room, what = left, (f"{left / 2**20:,.0f} MiB of the --memory-budget-mib {budget_bytes / 2**20:,.0f} "
                                f"({held_bytes / 2**20:,.0f} MiB held by the models loaded now)")
    if estimate.total > room:
        cpu = " (or n_gpu_layers 0 / device_map cpu to load into RAM)" if where.endswith("GPU memory") else ""
        raise OutOfMemory(f"Not loaded: this load needs {estimate.line()}, but only {what} is free. Lower n_ctx "
                          "or parallel (the KV cache grows with both), choose a smaller quantization or KV cache "
                          f"type{cpu}, or unload a model first. The model loaded now keeps serving.")
