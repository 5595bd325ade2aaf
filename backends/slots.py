"""Model slots granted strictly in arrival order (a fair semaphore).

A plain semaphore polled with a timeout lets a late waiter overtake one that has waited for
seconds; here each waiter takes a ticket and only the oldest one may take a free slot.
"""

from __future__ import annotations

import threading
from collections import deque


class FairSlots:
    def __init__(self, n: int):
        self.n = n
        self._free = n
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    def acquire(self, cancel: threading.Event | None = None, poll_s: float = 0.05) -> bool:
        """Wait for a slot in arrival order; False if ``cancel`` is set first."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while not (self._free > 0 and self._queue[0] is ticket):
                    if cancel is not None and cancel.is_set():
                        return False
                    self._cond.wait(poll_s)
                self._free -= 1
                return True
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        return self.n - self._free
