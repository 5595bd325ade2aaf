"""uvicorn's ``Server`` with a main loop that wakes once a second instead of ten times.

uvicorn's ``main_loop`` sleeps 0.1 s between ticks only to refresh the ``date`` header (once a second)
and to notice ``should_exit``. On a CPU-only server every wake-up of the event loop is a chance to
preempt one of the engine's threads mid-decode (llama.cpp's threads wait for each other at every op),
so an idle app should not wake for nothing. Here the loop ticks once a second, the header still
changes once a second, and a stop (a signal, or ``stop()`` from another thread) wakes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

TICK_S = 1.0
DATE_EVERY = 10  # uvicorn's on_tick refreshes the date header when counter % 10 == 0


class QuietServer(uvicorn.Server):
    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + DATE_EVERY) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            self._wake.clear()
            should_exit = await self.on_tick(counter)

    def wake(self) -> None:
        """Have the main loop look at ``should_exit`` now (safe from any thread)."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(event.set)

    def stop(self) -> None:
        """Begin a graceful shutdown from any thread."""
        self.should_exit = True
        self.wake()

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self.wake()
