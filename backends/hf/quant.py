"""Weight quantization methods of the transformers backend beside bitsandbytes: torchao and
optimum-quanto, each mapped to transformers' own quantization config (the weights are quantized
while loading; nothing is written to disk).

| name             | package        | what it does                                        | runs on      |
|------------------|----------------|-----------------------------------------------------|--------------|
| `torchao-int8wo` | torchao        | int8 weights, one scale per output channel          | CPU and CUDA |
| `torchao-int4wo` | torchao        | int4 weights in groups of 64, tinygemm int4 kernels | CUDA only    |
| `quanto-int8`    | optimum-quanto | int8 weights, one scale per output channel          | CPU and CUDA |
| `quanto-int4`    | optimum-quanto | int4 weights in groups of 128 (or the largest       | CPU and CUDA |
|                  |                | multiple of 32 dividing the row), scale + shift     |              |

Activations stay in the model's float dtype for all of them (weight-only quantization).
torch is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

from backends.errors import UnsupportedQuantization
from backends.files.quant_methods import METHODS


GROUP_SIZE = 64  # torchao-int4wo; SmolLM2's rows of 576 are no multiple of 128 (torchao would skip those weights)


def is_method(quant: str) -> bool:
    return quant in METHODS


def check(quant: str, on_gpu: bool) -> None:
    """Raise UnsupportedQuantization when ``quant`` cannot run here: its package is missing, or its
    kernels need CUDA and there is no GPU."""
    m = METHODS[quant]
    try:
        __import__(m.package)
    except Exception as exc:  # ImportError, or a native library that fails to load
        raise UnsupportedQuantization(
            f"{quant} needs the {m.pip} package: pip install {m.pip} ({type(exc).__name__}: {exc}).") from exc
    if not m.cpu and not on_gpu:
        raise UnsupportedQuantization(
            f"{quant} needs a CUDA GPU: {m.description}; there is no CPU kernel for it. "
            "On this machine choose torchao-int8wo, quanto-int8 or quanto-int4.")


def config(quant: str):
    """transformers' quantization_config for ``quant``."""
    import transformers

    if quant.startswith("quanto-"):
        return transformers.QuantoConfig(weights=quant.removeprefix("quanto-"))
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if quant == "torchao-int8wo":
        return transformers.TorchAoConfig(Int8WeightOnlyConfig())
    if quant == "torchao-int4wo":
        return transformers.TorchAoConfig(Int4WeightOnlyConfig(group_size=GROUP_SIZE,
                                                               int4_packing_format="tile_packed_to_4d"))
    raise KeyError(quant)


def grad_mode(quant: str):
    """The no-autograd context to run a model at ``quant`` in: quanto's packed int4 weights fail
    under torch.inference_mode ("Cannot set version_counter for inference tensor"), so quanto runs
    under no_grad; everything else under inference_mode."""
    import torch

    return torch.no_grad() if quant.startswith("quanto-") else torch.inference_mode()


def _tensor_bytes(t) -> int:
    """Bytes a tensor really holds: a quantized tensor subclass (torchao, quanto) reports its
    float shape and dtype, so count the inner tensors it is made of instead."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is not None:
        try:
            names, _ = flatten()
        except Exception:  # noqa: BLE001 - a plain tensor whose class merely has the attribute
            names = None
        if names:
            return sum(_tensor_bytes(getattr(t, n)) for n in names if getattr(t, n, None) is not None)
    return int(t.numel()) * int(t.element_size())


def weights_bytes(model) -> int:
    """The bytes of every parameter and buffer as stored (``get_memory_footprint`` counts a
    torchao/quanto weight at its float size)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:  # tied embeddings count once
            continue
        seen.add(id(t))
        total += _tensor_bytes(t)
    return total
