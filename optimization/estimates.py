"""Memory estimates made before a load (from file sizes and bits per weight), and whether they fit."""

from __future__ import annotations

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
