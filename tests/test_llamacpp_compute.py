"""Every llama.cpp decode in the process runs on one OS thread (backends/llamacpp/compute.py).

libgomp keeps an OpenMP team per calling thread for that thread's life; once the process holds more
OpenMP threads than CPUs, every decode slows (measured 123 -> 34 tok/s for the chat's batch engine
after one Compare-style generation on a Gradio worker thread; benchmarks/bench_compute_thread.py).
These tests check the mechanism, not a timing: generations from several long-lived threads (as
Gradio's workers are) add no OpenMP team each, and errors and results cross the hop intact."""

from __future__ import annotations

import os
import threading
import time
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


class _Counter:
    """A stepper with work for ``left`` steps (each ``pause`` seconds), recording where each ran."""

    def __init__(self, log: list, pause: float = 0.0):
        self.left, self.log, self.pause = 0, log, pause

    def step(self) -> bool:
        if self.left == 0:
            return False
        self.left -= 1
        self.log.append((self, threading.current_thread().name))
        time.sleep(self.pause)
        return self.left > 0


def test_steppers_take_turns_on_the_compute_thread_and_calls_run_between_steps():
    thread = llamacpp_compute.ComputeThread("test-compute")
    log: list = []
    a, b = _Counter(log), _Counter(log)
    thread.attach(a)
    thread.attach(b)
    thread.run(lambda: (setattr(a, "left", 3), setattr(b, "left", 3)))  # work for both, given at once
    while a.left or b.left:
        thread.run(lambda: None)
    assert {name for _, name in log} == {"test-compute"}
    assert [s for s, _ in log] == [a, b, a, b, a, b]  # turns, not one stepper to its end first
    # a one-off call (a Compare variant's eval) waits for one step, not for the stepper's work to end
    slow = _Counter(log, pause=0.005)
    thread.attach(slow)
    thread.run(setattr, slow, "left", 400)  # ~2 s of steps
    thread.run(lambda: None)
    assert slow.left > 300
    thread.detach(slow)
    left = slow.left
    thread.wake()
    thread.run(lambda: None)
    assert slow.left == left  # a detached stepper is stepped no more


@pytest.mark.slow
def test_a_compare_variant_decodes_while_the_chat_model_streams(cache_dir):
    """Two llama.cpp models in one process: the chat's batch engine streaming a long reply and a
    one-slot variant (as Compare and Evaluate load them) generating meanwhile. The variant's reply
    finishes long before the chat's: the compute thread interleaves them instead of one waiting for
    the other's whole reply."""
    from backends.llamacpp.backend import LlamaCppBackend
    from tests.conftest import long_request

    chat = LlamaCppBackend(cache_dir)
    chat.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048, parallel=4))
    variant = LlamaCppBackend(cache_dir)
    variant.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=1))
    try:
        chat_tokens: list[int] = []
        started = threading.Event()

        def chat_reply():
            for d in chat.stream(long_request(), threading.Event()):
                if d.tokens:
                    chat_tokens.append(d.tokens)
                    started.set()

        t = threading.Thread(target=chat_reply)
        t.start()
        assert started.wait(60)
        text = "".join(d.text for d in variant.stream(greedy(8), threading.Event()))
        during = len(chat_tokens)
        t.join(120)
        assert text
        assert 0 < during < len(chat_tokens), (during, len(chat_tokens))  # the chat was still streaming
    finally:
        variant.unload()
        chat.unload()
