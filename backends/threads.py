"""How many CPU threads an engine computes with: ``--threads auto`` (the default) or a number.

Every engine of the process takes its count from :func:`choose` when it loads: the chat model, the
lab's Compare and Evaluate variants (they load with the server's options), the embeddings and
scoring contexts beside a llama.cpp model, and torch for the transformers backend. A number the user
gave is used exactly. ``auto`` is the CPUs this process may really use: the physical cores, no more
than its CPU affinity allows, no more than a container's CPU quota (``cpu.max`` of cgroup v2, what a
Space or ``docker --cpus`` sets). Hyper-threads are left out: llama.cpp's threads wait for each
other at every op, and two of them on one core's siblings wait longest.

At run time auto follows the CPU other processes leave (:class:`AdaptiveThreads`): every generating
llama.cpp decode and every torch step takes the cores no other process used in the last quarter second, at least 1. On a
quiet machine that is every core, the fastest; with a busy process beside it on 2 cores, 1 thread, which
waits for nobody (llama.cpp's and torch's threads meet at a barrier after every op, and one preempted
thread stalls them all: measured, 2 threads fell below 1 tok/s where 1 thread kept tens;
benchmarks/README.md, "Shared CPU"). The OpenMP wait policy (``backends.omp_env``) bounds what a
preempted partner costs in between.

Each engine's choice is its own (a llama.cpp context carries its thread count; a transformers model
sets torch's on the thread that computes for it), so loading a second engine never changes the
first one's threads.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from backends.errors import InvalidRequest
from backends import omp_env

AUTO = "auto"
MAX_THREADS = 1024
_BAD = "n_threads (--threads) must be 'auto' (0) or a whole number, got {value!r}."


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    mode: str  # "auto" or "user"
    why: str

    def as_details(self) -> dict:
        """What a loaded model's details (and so /health) say about its threads."""
        return {"n_threads": self.threads, "threads_mode": self.mode, "threads_why": self.why,
                "omp_wait_policy": omp_env.describe()}


def parse_threads(value) -> int | None:
    """``auto`` / None / "" / 0 -> None (auto); a whole number 1..1024 -> itself; else InvalidRequest."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest(_BAD.format(value=value), "n_threads")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", AUTO):
            return None
        try:
            value = int(text)
        except ValueError:
            raise InvalidRequest(_BAD.format(value=value), "n_threads") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidRequest(_BAD.format(value=value), "n_threads")
        value = int(value)
    if not isinstance(value, int):
        raise InvalidRequest(_BAD.format(value=value), "n_threads")
    if value == 0:
        return None
    if not 1 <= value <= MAX_THREADS:
        raise InvalidRequest(f"n_threads (--threads) must be 'auto' (0) or between 1 and {MAX_THREADS}, "
                             f"got {value}.", "n_threads")
    return value


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil is a requirement
        return os.cpu_count() or 1


def cgroup_cpu_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """CPUs' worth of time a cgroup v2 quota allows this process ("max" or no file: None)."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus() -> tuple[int, str]:
    """How many threads auto runs, and why (a sentence for /health)."""
    cores = physical_cores()
    n, parts = cores, [f"{cores} physical core{'s' if cores != 1 else ''}"]
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = None
    if allowed is not None and allowed < n:
        n = allowed
        parts.append(f"{allowed} CPU{'s' if allowed != 1 else ''} in this process's affinity")
    quota = cgroup_cpu_quota()
    if quota is not None and math.floor(quota) < n:
        n = max(1, math.floor(quota))
        parts.append(f"a CPU quota of {quota:g}")
    return max(1, n), ", ".join(parts)


def choose(asked: int | None) -> ThreadChoice:
    """The thread count for an engine loading now: ``asked`` exactly, or auto's."""
    if asked:
        return ThreadChoice(int(asked), "user", f"{asked} set by the user, used exactly")
    n, why = usable_cpus()
    return ThreadChoice(n, AUTO, f"auto: {why}")


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(monotonic time, CPU seconds the whole system has been busy, CPU seconds of this process), from
    /proc/stat and /proc/self/stat via psutil; None where they cannot be read."""
    try:
        import psutil

        sys_t = psutil.cpu_times()
        busy = sum(sys_t) - sys_t.idle - getattr(sys_t, "iowait", 0.0)
        own = psutil.Process().cpu_times()
        return time.perf_counter(), busy, own.user + own.system
    except Exception:  # noqa: BLE001 - a figure to adapt on, never a reason to fail
        return None


def own_cores(start, end) -> float:
    """CPU cores' worth of time this process used between two snapshots."""
    return max(0.0, (end[2] - start[2]) / (end[0] - start[0])) if end[0] > start[0] else 0.0


def others_cores(start, end) -> float | None:
    """CPU cores' worth of time other processes used between two snapshots."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


class AdaptiveThreads:
    """auto at run time: the threads a llama.cpp decode uses now, from the CPU other processes take.

    llama.cpp's threads wait for each other at every op, so a thread whose core another process holds
    stalls the whole step. Every ``interval_s`` this looks at how many cores other processes used
    since the last look and gives the engine the cores left (at least 1, at most its auto count):
    quiet, every core (the fastest); with a busy process beside it on 2 cores, 1 thread, which has a
    core to itself and waits for nobody, where 2 threads fell below 1 tok/s (benchmarks/README.md,
    "Shared CPU"). The decode's own process is left out of the count (its threads are the ones being
    sized), so an idle machine is seen as idle while the engine itself is busy. After a pause (between two
    replies) the count measured last holds for the first window: the window since the last look would
    describe the pause, not the present. Greedy text does not depend on the count (llama.cpp without
    flash attention and torch gave the same 96 tokens at 1 and 2 threads; with flash attention
    llama.cpp's split-KV path past 256 tokens needs 2 or more)."""

    # others using up to 0.8 of a core still leave that core to the engine: with other test runs taking part
    # of a core, llama-server's 2 threads decoded 116 tok/s (median) where 1 thread gave 63; a whole busy
    # core is what collapses 2 threads (benchmarks/README.md, "Shared CPU")
    SLACK = 0.2
    # a window more than this many intervals long, with this process mostly idle in it, is a pause. Measured
    # when it was not set aside: a 2-core app given 1 thread for the first quarter second of each reply
    # after another server's 1-second reply decoded 0.92 of llama-server, where 2 threads gave 0.97
    # (benchmarks/README.md, "Shared CPU")
    STALE = 2
    PAUSED_BELOW = 0.5  # cores' worth of CPU this process used over such a window: it was mostly idle

    def __init__(self, most: int, interval_s: float = 0.25, cpus: int | None = None,
                 on_change=lambda n, others: None):
        """``on_change(threads, others_cores)`` is called when the count changes (the backend's details)."""
        self.on_change = on_change
        self.most = max(1, most)
        self.interval_s = interval_s
        self.cpus = cpus or os.cpu_count() or 1
        self._n = self.most
        self._last = cpu_snapshot()
        self._lock = threading.Lock()
        self.others = None  # cores other processes used in the last window (for /health)

    def now(self) -> int:
        """The thread count for the next decode."""
        if self.most == 1 or self._last is None:
            return self._n
        if time.perf_counter() - self._last[0] < self.interval_s:
            return self._n
        with self._lock:
            snap = cpu_snapshot()
            # a long window in which this process was mostly idle spans a pause between two replies: it holds
            # what other processes did meanwhile (another server's reply, a build that has ended), not the
            # present. The count measured last holds until the window that starts here measures again. (A
            # long window in which it computed is one slow decode, a big model's: measured as any other.)
            paused = (snap is not None and snap[0] - self._last[0] > self.STALE * self.interval_s
                      and own_cores(self._last, snap) < self.PAUSED_BELOW)
            others = None if paused else others_cores(self._last, snap)
            self._last = snap
            if others is not None:
                self.others = round(others, 2)
                n = max(1, min(self.most, int(self.cpus - others + self.SLACK)))
                if n != self._n:
                    self._n = n
                    self.on_change(n, self.others)
            return self._n


class ContextThreads:
    """Keeps one llama.cpp context's thread count on its AdaptiveThreads' figure (``llama_set_n_threads``,
    which llama.cpp allows between decodes); a context loaded with a user-set count has none and never changes."""

    def __init__(self, L, ctx, adaptive: AdaptiveThreads | None, threads: int):
        self.L, self.ctx, self.adaptive, self.applied = L, ctx, adaptive, threads

    def sync(self) -> None:
        """Before a decode, on the compute thread."""
        if self.adaptive is None:
            return
        n = self.adaptive.now()
        if n != self.applied:
            self.L.llama_set_n_threads(self.ctx, n, n)
            self.applied = n
