"""Request timing in ONE place, for every backend and every entry point.

Definitions follow vLLM's benchmark: TTFT = request sent -> first token; TPOT = (latency - TTFT) /
(output tokens - 1); ITL = gap between consecutive streamed chunks. ``t0`` is taken by the edge that
received the request (so queue/lock wait is inside TTFT), ``queue_wait`` is how much of it was spent
waiting for the model.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from backends.base import TextDelta
from backends.threads import cpu_snapshot
from monitoring.contention import QuietSpeed
from monitoring.contention import describe as describe_contention


@dataclass
class RequestStats:
    request_id: int
    endpoint: str
    model: str
    quantization: str
    started_at: float  # wall clock (time.time()) when the request arrived
    queue_wait_s: float = 0.0
    ttft_s: float | None = None
    e2e_s: float = 0.0
    tpot_s: float | None = None
    itl_mean_s: float | None = None
    itl_max_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_s: float | None = None  # decode speed: (tokens - 1) / (e2e - ttft)
    finish_reason: str | None = None
    outcome: str = "running"  # running | ok | cancelled | error
    error: str | None = None
    peak_rss_bytes: int | None = None  # process RSS, sampled every RSS_EVERY tokens
    client: str | None = None  # API key id or IP, set by the edge
    cpu_contended: dict | None = None  # decoded far below this model's quiet speed: the figures (monitoring.contention)
    draft_tokens: int | None = None  # speculative decoding: tokens drafted (None: not speculative)
    accepted_tokens: int | None = None  # speculative decoding: drafted tokens the model accepted
    sampling: dict | None = None  # the samplers the engine was given away from their defaults ({} = all default)
    prompt: str | None = field(default=None, repr=False)  # only with --log-prompts
    itls: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("itls")
        if d["prompt"] is None:
            d.pop("prompt")
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 6)
        return d

    @property
    def acceptance_rate(self) -> float | None:
        """Speculative decoding: accepted / drafted tokens (None when nothing was drafted)."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    def summary(self) -> str:
        """One human line, shown under a chat reply."""
        parts = []
        if self.ttft_s is not None:
            parts.append(f"TTFT {self.ttft_s * 1000:.0f} ms")
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        if self.tpot_s:
            parts.append(f"TPOT {self.tpot_s * 1000:.1f} ms")
        parts.append(f"{self.prompt_tokens} prompt + {self.completion_tokens} output tokens")
        parts.append(f"{self.e2e_s:.2f} s")
        if self.acceptance_rate is not None:
            parts.append(f"draft acceptance {self.acceptance_rate:.0%} ({self.accepted_tokens}/{self.draft_tokens})")
        if self.finish_reason and self.finish_reason != "stop":
            parts.append(self.finish_reason)
        if self.cpu_contended:
            parts.append(describe_contention(self.cpu_contended))
        return " · ".join(parts)


class RequestTimer:
    """Measures one request. Call ``started_generating`` when the model lock is held, ``chunk``
    for every delta, and ``finish`` once."""

    def __init__(self, request_id: int, endpoint: str, model: str, quantization: str, t0: float | None = None):
        self.t0 = time.perf_counter() if t0 is None else t0
        self.stats = RequestStats(request_id, endpoint, model, quantization, time.time() - (time.perf_counter() - self.t0))
        self._last: float | None = None
        self.peak_running = 0  # most generations of the app running at once while this one ran
        self.cpu_start = None  # monitoring.contention.cpu_snapshot() when it started generating

    def started_generating(self) -> None:
        self.stats.queue_wait_s = time.perf_counter() - self.t0
        self.cpu_start = cpu_snapshot()

    def chunk(self, delta: TextDelta) -> None:
        now = time.perf_counter()
        s = self.stats
        if delta.tokens:
            if s.ttft_s is None:
                s.ttft_s = now - self.t0
            elif self._last is not None:
                s.itls.append(now - self._last)
            self._last = now
            s.completion_tokens += delta.tokens
        if delta.prompt_tokens:
            s.prompt_tokens = delta.prompt_tokens
        if delta.finish_reason:
            s.finish_reason = delta.finish_reason
        if delta.draft_tokens or delta.accepted_tokens:
            s.draft_tokens = (s.draft_tokens or 0) + delta.draft_tokens
            s.accepted_tokens = (s.accepted_tokens or 0) + delta.accepted_tokens

    def finish(self, outcome: str, error: str | None = None) -> RequestStats:
        s = self.stats
        s.e2e_s = time.perf_counter() - self.t0
        s.outcome = outcome
        s.error = error
        if s.ttft_s is not None and s.completion_tokens > 1:
            decode = s.e2e_s - s.ttft_s
            s.tpot_s = decode / (s.completion_tokens - 1)
            s.tokens_per_s = (s.completion_tokens - 1) / decode if decode > 0 else None
        if s.itls:
            s.itl_mean_s = sum(s.itls) / len(s.itls)
            s.itl_max_s = max(s.itls)
        return s


RSS_EVERY = 32


class MetricsRecorder:
    """Implements ``backends.base.Recorder``: keeps the last requests and notifies listeners (the
    Prometheus exporter, the request log). Given to the ModelManager; no module-level state here."""

    def __init__(self, keep: int = 200, rss: Callable[[], int] | None = None):
        self._rss = rss
        self._recent: deque[RequestStats] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str, RequestStats], None]] = []
        self._ids = itertools.count(1)
        self.running = 0
        self.waiting = 0
        self.total = 0
        self.quiet = QuietSpeed()  # each model's best speed alone, to tell a contended CPU
        self._running_timers: set[RequestTimer] = set()

    def next_id(self) -> int:
        return next(self._ids)

    def start(self, endpoint: str, model: str, quantization: str, t0: float | None = None,
              client: str | None = None, prompt: str | None = None) -> RequestTimer:
        """A timer for one request (the ModelManager calls this for every generation)."""
        timer = RequestTimer(self.next_id(), endpoint, model, quantization, t0)
        timer.stats.client = client
        timer.stats.prompt = prompt
        return timer

    def add_listener(self, fn: Callable[[str, RequestStats], None]) -> None:
        self._listeners.append(fn)

    def _emit(self, event: str, stats: RequestStats) -> None:
        for fn in self._listeners:
            fn(event, stats)

    def recent(self, n: int = 50) -> list[RequestStats]:
        with self._lock:
            return list(self._recent)[-n:]

    def timed(self, timer: RequestTimer, stream_factory: Callable[[], Iterator[TextDelta]],
              acquire: Callable[[], bool] | None = None) -> Iterator[TextDelta]:
        """Run ``stream_factory()`` under timing. ``acquire`` blocks until the model has a free slot
        (its wait is the queue wait) and returns False if the request was cancelled meanwhile."""
        with self._lock:
            self.waiting += 1
        self._emit("waiting", timer.stats)
        outcome, error = "ok", None
        counted_running = False
        try:
            if acquire is not None and not acquire():
                cancelled = TextDelta("", finish_reason="cancelled")
                timer.chunk(cancelled)
                outcome = "cancelled"
                yield cancelled
                return
            timer.started_generating()
            with self._lock:
                self.waiting -= 1
                self.running += 1
                self._running_timers.add(timer)
                for t in self._running_timers:  # each running one now has this many beside it
                    t.peak_running = max(t.peak_running, len(self._running_timers))
            counted_running = True
            self._emit("running", timer.stats)
            rss, peak, n = self._rss, 0, 0
            if rss is not None:
                peak = rss()
            for delta in stream_factory():
                timer.chunk(delta)
                n += 1
                if rss is not None and n % RSS_EVERY == 0:
                    peak = max(peak, rss())
                yield delta
            if rss is not None:
                timer.stats.peak_rss_bytes = max(peak, rss())
            if timer.stats.finish_reason == "cancelled":
                outcome = "cancelled"
        except GeneratorExit:
            outcome = "cancelled"
            raise
        except BaseException as exc:  # recorded, then re-raised unchanged
            outcome, error = "error", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            stats = timer.finish(outcome, error)
            stats.cpu_contended = self.quiet.judge(stats, alone=timer.peak_running == 1, cpu_start=timer.cpu_start)
            with self._lock:
                if counted_running:
                    self.running -= 1
                    self._running_timers.discard(timer)
                else:
                    self.waiting -= 1
                self.total += 1
                self._recent.append(stats)
            self._emit("finished", stats)
