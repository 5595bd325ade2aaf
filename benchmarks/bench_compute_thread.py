"""The chat's batch engine before and after another llama.cpp generation on a long-lived thread, in ONE run.

    python -m benchmarks.bench_compute_thread

What a server does all day: the chat model (``--parallel 4``, the batch engine) decodes on the process's
compute thread (where batch engines are stepped), and a Compare variant (one slot) generates on a Gradio
worker thread, which lives on. libgomp keeps an OpenMP team per calling thread; with more OpenMP threads than CPUs it throttles
every decode in the process. backends/llamacpp/compute.py runs all llama.cpp compute on one thread;
this prints the chat's greedy decode tok/s (200 tokens) before, after the other generation, and after
that model is unloaded, and the ratios after / before (1.0 = no harm).
"""

from __future__ import annotations

import argparse
import threading
import time

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams
from backends.llamacpp.backend import LlamaCppBackend
from backends.files.sources import default_cache_dir


def decode_rate(backend, tokens: int = 200) -> float:
    req = ChatRequest((Message("user", "Write a long story about a dragon."),),
                      SamplingParams(max_new_tokens=tokens, temperature=0.0, seed=0))
    first, n = None, 0
    for d in backend.stream(req, threading.Event()):
        if d.tokens and first is None:
            first = time.perf_counter()
        n += d.tokens
    return (n - 1) / (time.perf_counter() - first)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # no options: --help
    chat = LlamaCppBackend(default_cache_dir())
    chat.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048, parallel=4))
    decode_rate(chat, 8)
    before = decode_rate(chat)
    lab = LlamaCppBackend(default_cache_dir())
    lab.load(ModelSpec(source="embedded", backend="llamacpp", quantization="Q8_0", n_ctx=2048, parallel=1))
    decode_rate(lab, 16)  # on this (long-lived) main thread, as a Gradio worker would run a Compare pane
    after = decode_rate(chat)
    lab.unload()
    unloaded = decode_rate(chat)
    chat.unload()
    print(f"chat batch engine decode tok/s: before {before:.1f}, after another generation {after:.1f} "
          f"({after / before:.2f}x), after that model unloaded {unloaded:.1f} ({unloaded / before:.2f}x)")


if __name__ == "__main__":
    main()
