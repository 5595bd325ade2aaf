"""Blocking work for one HTTP request, stopped when its client goes away.

A non-streamed answer gives Starlette no reason to notice a disconnect: the handler awaits its work
and the work runs to the end for nobody. Here the work runs in the thread pool while a watcher waits
for the client's ``http.disconnect``; either that or the handler being cancelled (the server's
shutdown) sets ``cancel``, which the work checks between its steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request

T = TypeVar("T")


async def run_until_disconnect(request: Request, cancel: threading.Event, work: Callable[[], T]) -> T:
    """``work()`` in the thread pool; ``cancel`` is set as soon as the client disconnects, or when
    this coroutine is cancelled. Call it after the body has been read."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                cancel.set()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(work)
    except BaseException:
        cancel.set()  # the handler was cancelled (shutdown) or failed: the work stops too
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
