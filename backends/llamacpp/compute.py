"""The one OS thread that runs llama.cpp's compute in this process.

llama.cpp, as llama-cpp-python builds it, runs each graph on an OpenMP team, and libgomp keeps one
team per *calling thread* for that thread's whole life. Once two long-lived threads have decoded
(a Gradio worker running a Compare variant, an embedding, a lab scoring, and the batch engine's
scheduler), the process holds more OpenMP threads than CPUs, libgomp "throttles" (its workers sleep
on a futex between graph ops instead of spinning) and every later decode in the process is slower:
measured on the 2-core machine, the chat's batch engine fell from 123 to 34 tok/s after one
single-slot generation on another long-lived thread, and stayed there. llama-server does all its
compute on one thread; so does this app: every ``llama_decode`` / ``Llama.eval`` goes through
:func:`run`, which executes it on one daemon thread (inline when already there). The hop costs a
queue put and a wake-up (tens of microseconds) per decode.

The thread is process-wide by nature (OpenMP's thread count is per process), hence one module-level
instance rather than one per backend.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class ComputeThread:
    def __init__(self, name: str = "llama-compute"):
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the compute thread; its result, or its exception re-raised here."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        self._ensure_started()
        future: Future = Future()
        self._queue.put((future, fn, args))
        return future.result()

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            future, fn, args = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
                future.set_exception(exc)


_COMPUTE = ComputeThread()


def run(fn: Callable[..., T], *args: Any) -> T:
    """Run one llama.cpp compute call (decode, eval) on the process's compute thread."""
    return _COMPUTE.run(fn, *args)
