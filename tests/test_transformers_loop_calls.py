"""Calls queued for the continuous batch's generation thread (backends/hf/loop_calls.py), on a
stand-in for transformers' manager: they run on the loop's thread between its steps, their errors reach
the caller and never the loop, and once the loop has ended nothing is left waiting."""

from __future__ import annotations

import threading

import pytest

from backends.hf.loop_calls import LoopCalls


class FakeManager:
    """The two things LoopCalls touches: the loop body (called per step) and the idle loop's wake-up."""

    def __init__(self):
        self._wake_up_loop = threading.Event()
        self.stop = threading.Event()
        self.steps = 0

    def _generation_loop_body(self, batch_processor, bootstrapping) -> bool:
        self.steps += 1
        self._wake_up_loop.wait(timeout=0.1)
        self._wake_up_loop.clear()
        return not self.stop.is_set()


def start(calls: LoopCalls, mgr: FakeManager) -> threading.Thread:
    def loop():
        try:
            while mgr._generation_loop_body(None, bootstrapping=False):
                pass
        finally:
            calls.close()

    thread = threading.Thread(target=loop, name="fake-generation-loop", daemon=True)
    thread.start()
    return thread


def test_calls_run_on_the_loop_thread_and_errors_reach_the_caller():
    mgr, calls = FakeManager(), LoopCalls()
    calls.install(mgr)
    thread = start(calls, mgr)
    try:
        assert calls.submit(threading.current_thread).result(timeout=10) is thread
        with pytest.raises(ZeroDivisionError):
            calls.submit(lambda: 1 / 0).result(timeout=10)
        assert thread.is_alive()  # the error went to the caller, not into the loop
        assert calls.submit(lambda: 7).result(timeout=10) == 7
    finally:
        mgr.stop.set()
        thread.join(timeout=10)


def test_once_the_loop_has_ended_submit_says_so():
    mgr, calls = FakeManager(), LoopCalls()
    calls.install(mgr)
    thread = start(calls, mgr)
    mgr.stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert calls.submit(lambda: 1) is None  # the caller runs it itself


def test_calls_queued_as_the_loop_ends_still_run():
    mgr, calls = FakeManager(), LoopCalls()
    gate = threading.Event()
    mgr._generation_loop_body = lambda *a, **k: gate.wait(10) and False  # the loop's last step, then its end
    calls.install(mgr)
    thread = start(calls, mgr)
    future = calls.submit(lambda: "ran")
    gate.set()
    assert future.result(timeout=10) == "ran"
    thread.join(timeout=10)
