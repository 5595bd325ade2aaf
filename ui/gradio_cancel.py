"""A streaming handler cancelled during one of its steps is closed, not left holding its slot.

Gradio 6.31 runs a sync generator handler one ``next()`` at a time in a worker thread
(``SyncToAsyncIterator.__anext__``) and keeps the iterator in ``app.iterators`` only once a step
has returned. A cancel (gradio_client's ``job.cancel()``, a page's Stop wired to ``cancels=``) that
arrives while a step runs cancels the event's task, and ``POST /cancel`` finds no iterator to close.
The step's thread cannot be interrupted: it finishes, its result is dropped with the task, and the
generator is left suspended at its ``yield``, reachable only through the cancelled task's
traceback until the cyclic garbage collector happens to run. Its ``finally`` (the backend's cancel
event, the slot, the request's record) does not run, so the model goes on generating for nobody.
On a quiet CPU a step is a few milliseconds and the window is small; on a contended one the first
step (prefill and first token) can take seconds and a cancel often lands in it: a transformers reply
cancelled that way went on for over 60 s with two busy processes beside the server.

Here the step that was cancelled closes its generator (in a thread: ``close()`` runs the handler's
``finally``, which may wait on the engine briefly), so a cancel is a cancel whenever it arrives.
Applied only to the Gradio version it was written against, once per process (the class is Gradio's).
"""

from __future__ import annotations

import asyncio
import threading
import time

PATCHED_VERSION = "6.31.0"


def close_cancelled_steps() -> bool:
    """Patch ``gradio.utils.SyncToAsyncIterator`` so a cancelled step closes its generator.
    Returns whether the patch is in force."""
    import gradio
    from gradio import utils

    cls = utils.SyncToAsyncIterator
    if getattr(cls, "_closes_when_cancelled", False):
        return True
    if gradio.__version__ != PATCHED_VERSION:
        return False
    step = cls.__anext__

    async def __anext__(self):
        try:
            return await step(self)
        except asyncio.CancelledError:
            # nobody will ask for the next item or close this one: close it once the step is over
            threading.Thread(target=close_quietly, args=(self.iterator,), name="gradio-cancelled-step",
                             daemon=True).start()
            raise

    cls.__anext__ = __anext__
    cls._closes_when_cancelled = True
    return True


def close_quietly(iterator, within_s: float = 600.0) -> None:
    """``iterator.close()``, retried while the generator is still executing its step (the cancelled
    await can return before the worker thread's ``next()`` has)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            iterator.close()
            return
        except ValueError:  # "generator already executing": the step is still running
            time.sleep(0.05)
        except Exception:  # noqa: BLE001 - the handler's own cleanup failed; nothing is waiting on it
            return
