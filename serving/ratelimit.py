"""Per-client limits: requests per minute (token bucket) and concurrent streams.

A client is its API key (hashed), its user, or its address: the address it connects from, or the one
a proxy of ``--forwarded-allow-ips`` names in X-Forwarded-For (never a header from anyone else, or
rotating it would give a fresh bucket per request). Over the limit raises Busy with a Retry-After in
whole seconds, which /v1 turns into 429 (the same number in the header and the message) and the UI
into a gr.Error.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from backends.errors import Busy


@dataclass
class _Bucket:
    tokens: float
    updated: float
    streams: int = 0


class RateLimiter:
    def __init__(self, requests_per_minute: int = 0, concurrent_streams: int = 0, max_clients: int = 10_000):
        """0 disables a limit."""
        self.rpm = requests_per_minute
        self.concurrent = concurrent_streams
        self.max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.rpm or self.concurrent)

    @contextmanager
    def slot(self, client: str | None):
        """Hold one request slot for ``client`` for the duration of the block (the whole stream)."""
        if not self.enabled:
            yield
            return
        key = client or "anonymous"
        self._take(key)
        try:
            yield
        finally:
            with self._lock:
                b = self._buckets.get(key)
                if b is not None:
                    b.streams -= 1

    def _take(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= self.max_clients:  # forget idle clients, bound the memory
                    for k in [k for k, v in self._buckets.items() if v.streams == 0][: self.max_clients // 10 or 1]:
                        del self._buckets[k]
                b = self._buckets[key] = _Bucket(tokens=float(self.rpm), updated=now)
            if self.concurrent and b.streams >= self.concurrent:
                raise Busy(f"Too many concurrent requests from this client (limit {self.concurrent}): "
                           "wait for one to finish.", retry_after=1.0)
            if self.rpm:
                b.tokens = min(float(self.rpm), b.tokens + (now - b.updated) * self.rpm / 60.0)
                b.updated = now
                if b.tokens < 1.0:  # whole seconds, rounded up: the message says what Retry-After says
                    wait = max(1, math.ceil((1.0 - b.tokens) * 60.0 / self.rpm))
                    raise Busy(f"Rate limit of {self.rpm} requests per minute reached: retry in {wait} s.",
                               retry_after=float(wait))
                b.tokens -= 1.0
            b.streams += 1
