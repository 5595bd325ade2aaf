"""Run other torch compute on the continuous batch's generation thread, between its steps.

torch's CPU build computes on OpenMP (its own libgomp.so.1), and libgomp keeps one thread team per
*calling thread* for that thread's whole life. The batch manager's generation thread lives as long as
the batcher and owns one team; a generate() on any other thread (what the batch cannot honour:
repetition penalty, constraints, logprobs, seeds for sampled text, prompt lookup) builds a second
one. With more OpenMP threads than CPUs libgomp throttles (its workers sleep on a futex between ops
instead of spinning) and every parallel region slows: measured on the 2-core machine, such a
generate() ran at about half its speed while a batcher was alive, even an idle one
(benchmarks/bench_transformers_fallback.py). The same cause as llama.cpp's (backends/llamacpp/compute.py),
and the same cure: one thread does the compute.

The manager's loop calls ``_generation_loop_body`` once per step (or per 0.1 s wait when idle); it is
wrapped here to run queued calls first. A generate() handed over this way holds the backend's
exclusive path (no batched request is running), so it stalls nothing that could have run. When the
loop has ended (stopped, or killed by an error) ``submit`` says so and the caller runs the call itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class LoopCalls:
    """Calls queued for the manager's generation thread; :meth:`install` before ``manager.start()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[Future, Callable[[], Any]]] = []
        self._closed = False
        self._wake: Callable[[], None] = lambda: None

    def install(self, manager) -> None:
        """Wrap the manager's loop body (looked up on the instance at each step) to run queued calls first."""
        body = manager._generation_loop_body
        self._wake = manager._wake_up_loop.set  # an idle loop waits up to 0.1 s on this event

        def body_then_calls(*args, **kwargs):
            self.run_pending()
            return body(*args, **kwargs)

        manager._generation_loop_body = body_then_calls

    def submit(self, fn: Callable[[], Any]) -> Future | None:
        """Queue ``fn`` for the generation thread; None if that loop has ended (run it elsewhere)."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                return None
            self._pending.append((future, fn))
        self._wake()
        return future

    def run_pending(self) -> None:
        """Run the queued calls here (the generation thread); an error goes to its caller, never the loop."""
        while True:
            with self._lock:
                if not self._pending:
                    return
                future, fn = self._pending.pop(0)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
                future.set_exception(exc)

    def close(self) -> None:
        """The loop has ended (called on its thread, on the way out): run what was queued, refuse the rest."""
        while True:
            self.run_pending()
            with self._lock:
                if not self._pending:
                    self._closed = True
                    return
