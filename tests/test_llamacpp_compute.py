"""Every llama.cpp decode in the process runs on one OS thread (backends/llamacpp/compute.py).

libgomp keeps an OpenMP team per calling thread for that thread's life; once the process holds more
OpenMP threads than CPUs, every decode slows (measured 123 -> 34 tok/s for the chat's batch engine
after one Compare-style generation on a Gradio worker thread; benchmarks/bench_compute_thread.py).
These tests check the mechanism, not a timing: generations from several long-lived threads (as
Gradio's workers are) add no OpenMP team each, and errors and results cross the hop intact."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from backends.llamacpp import compute as llamacpp_compute
from backends.base import ModelSpec
from tests.conftest import greedy


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_run_returns_results_and_raises_errors_on_the_caller():
    seen = []
    assert llamacpp_compute.run(lambda a, b: (seen.append(threading.current_thread().name), a + b)[1], 2, 3) == 5
    assert seen == ["llama-compute"]
    with pytest.raises(ZeroDivisionError):
        llamacpp_compute.run(lambda: 1 / 0)
    # a call made from the compute thread itself runs inline (no deadlock)
    assert llamacpp_compute.run(lambda: llamacpp_compute.run(lambda: 7)) == 7


@pytest.mark.slow
def test_generations_from_many_long_lived_threads_add_no_openmp_team(cache_dir):
    from backends.llamacpp.backend import LlamaCppBackend

    b = LlamaCppBackend(cache_dir)
    b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=1, n_threads=2))
    try:
        def generate(_):
            return "".join(d.text for d in b.stream(greedy(8), threading.Event()))

        generate(0)  # the compute thread and its OpenMP team exist from here on
        before = os_threads()
        with ThreadPoolExecutor(max_workers=4) as pool:  # 4 long-lived callers, like Gradio's workers
            texts = list(pool.map(generate, range(8)))
            during = os_threads()  # the pool's threads are still alive: their teams would be too
        assert len(set(texts)) == 1 and texts[0]
        # the 4 pool threads themselves, and nothing per caller: without the compute thread each caller
        # that decoded kept an OpenMP worker (n_threads - 1) for its whole life
        assert during - before <= 4, (before, during)
    finally:
        b.unload()
