"""What the transformers backend's weight-only quantization names mean (torchao, optimum-quanto): the package
that implements each, its nominal bits per weight, whether its kernels run on a CPU, and the sentence provenance
shows. Plain data, so provenance can read it without importing the engine package that uses it (backends/hf/quant.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    package: str  # the import name
    pip: str  # the pip name, for the error that says how to get it
    bits: float  # nominal bits per quantized weight
    cpu: bool  # kernels that run on this CPU
    description: str  # what provenance says the method is


METHODS: dict[str, Method] = {
    "torchao-int8wo": Method("torchao", "torchao", 8.0, True,
                             "torchao int8 weight-only: int8 weights, one scale per output channel"),
    "torchao-int4wo": Method("torchao", "torchao", 4.0, False,
                             "torchao int4 weight-only: int4 weights in groups of 64 (tinygemm CUDA kernels)"),
    "quanto-int8": Method("optimum.quanto", "optimum-quanto", 8.0, True,
                          "optimum-quanto int8 weights, one scale per output channel"),
    "quanto-int4": Method("optimum.quanto", "optimum-quanto", 4.0, True,
                          "optimum-quanto int4 weights in groups of 128 or fewer (a scale and a shift each)"),
}
