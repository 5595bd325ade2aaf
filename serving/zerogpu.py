"""Hugging Face ZeroGPU: GPU work must run inside a function decorated with ``spaces.GPU``. Where the
``spaces`` package is absent (everywhere but a Space), the decorator is the identity."""

from __future__ import annotations

from collections.abc import Callable


def gpu_task(fn: Callable, duration: int = 120) -> Callable:
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
