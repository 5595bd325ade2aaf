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


class SharedExclusive:
    """Many shared holders or one exclusive holder, never both; a waiting exclusive holder goes
    before shared holders that come after it (so it is not starved)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    def acquire_shared(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._exclusive_waiting)
            self._shared += 1

    def release_shared(self) -> None:
        with self._cond:
            self._shared -= 1
            self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            self._exclusive_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            finally:
                self._exclusive_waiting -= 1
            self._exclusive = True

    def release_exclusive(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()
