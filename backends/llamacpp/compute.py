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

The batch engines (``backends/llamacpp/batch.py``, one per loaded llama.cpp model) schedule *on* this
thread rather than on threads of their own: each is a stepper (:meth:`ComputeThread.attach`), and the
thread's loop gives every stepper with work one step (one ``llama_decode`` for all its sequences, then
their sampling), runs the one-off calls queued meanwhile, and steps again; with no work anywhere it
sleeps on its queue. So sampling a token and launching the next decode happen on the OpenMP team's own
master thread, with no thread hop and no wake-up between them: the hop cost a scheduler wake-up per
token on the critical path, and on 2 cores, where the team's partner thread spins through the gap and
the HTTP thread and the client want the other core, that wake-up waited its turn (measured, the three
servers taking turns: the app's /v1 decode went from 0.87 to 0.915 of llama-server's with this and the engine's
cheaper picks; benchmarks/README.md "Shared CPU").

The thread is process-wide by nature (OpenMP's thread count is per process), hence one module-level
instance rather than one per backend.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
_WAKE = object()  # queued by wake(): look at the steppers again


class Stepper(Protocol):
    def step(self) -> bool:
        """Do one unit of work (on the compute thread); whether there is more to do right away."""


class ComputeThread:
    def __init__(self, name: str = "llama-compute"):
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._steppers: list[Stepper] = []  # changed only on the compute thread

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the compute thread; its result, or its exception re-raised here."""
        if self.on_thread():
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

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def attach(self, stepper: Stepper) -> None:
        """Step ``stepper`` on this thread from now on, whenever it has work (see :meth:`wake`)."""
        self.run(self._steppers.append, stepper)

    def detach(self, stepper: Stepper) -> None:
        """Stop stepping ``stepper``; once this returns, it is never stepped again."""
        self.run(lambda: stepper in self._steppers and self._steppers.remove(stepper))

    def wake(self) -> None:
        """A stepper has new work (a request, a cancel): step the steppers again if the thread sleeps."""
        self._ensure_started()
        self._queue.put(_WAKE)

    def _loop(self) -> None:
        busy = False
        while True:
            # the one-off calls queued so far (all of them, without waiting while a stepper is busy)
            while True:
                try:
                    item = self._queue.get(block=not busy)
                except queue.Empty:
                    break
                busy = True  # something arrived: look at the steppers before sleeping again
                if item is not _WAKE:
                    self._call(*item)
            busy = False
            for stepper in list(self._steppers):
                try:
                    busy = stepper.step() or busy
                except BaseException:  # noqa: BLE001 - a stepper handles its own requests' errors
                    log.exception("llama.cpp stepper %r failed", stepper)

    @staticmethod
    def _call(future: Future, fn: Callable, args: tuple) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            future.set_exception(exc)


_COMPUTE = ComputeThread()


def run(fn: Callable[..., T], *args: Any) -> T:
    """Run one llama.cpp compute call (decode, eval) on the process's compute thread."""
    return _COMPUTE.run(fn, *args)


def attach(stepper: Stepper) -> None:
    _COMPUTE.attach(stepper)


def detach(stepper: Stepper) -> None:
    _COMPUTE.detach(stepper)


def wake() -> None:
    _COMPUTE.wake()


def on_thread() -> bool:
    return _COMPUTE.on_thread()
