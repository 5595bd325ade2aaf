"""Is the CPU contended? A reply decoded far below its model's quiet speed, and who took the CPU.

Each model's *quiet figure* is the best decode speed (tok/s) it has shown on a reply that ran alone
(no other generation of the app running beside it, at least ``MIN_TOKENS`` tokens, no speculative
decoding, which makes tokens cheaper). A later reply, alone as well, below ``CONTENDED_RATIO`` of that
figure is marked ``cpu_contended``, with the figures that explain it: the system's load average and
how much CPU other processes used while the reply was decoding (from the system's and this process's
CPU times, taken when the reply started and ended). The chat's stats line and the Monitor show it, so
a slow reply on a shared machine says why instead of leaving the user guessing.
"""

from __future__ import annotations

import os
import threading

from backends.threads import cpu_snapshot, others_cores

CONTENDED_RATIO = 0.5
MIN_TOKENS = 8


def other_cpu_percent(start, end) -> float | None:
    """CPU other processes used between two snapshots, in percent of one core."""
    cores = others_cores(start, end)
    return None if cores is None else round(100.0 * cores, 1)


class QuietSpeed:
    """The quiet figure of each model (by name and quantization) and the verdict on each reply."""

    def __init__(self) -> None:
        self._best: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def judge(self, stats, alone: bool, cpu_start=None) -> dict | None:
        """Record ``stats`` (a finished RequestStats) and return the contention verdict for it, or None."""
        tps = stats.tokens_per_s
        if (not alone or not tps or stats.outcome != "ok" or stats.completion_tokens < MIN_TOKENS
                or stats.draft_tokens is not None):
            return None
        key = (stats.model, stats.quantization)
        with self._lock:
            best = self._best.get(key)
            self._best[key] = max(best or 0.0, tps)
        if best is None or tps >= CONTENDED_RATIO * best:
            return None
        try:
            load = round(os.getloadavg()[0], 2)
        except (AttributeError, OSError):
            load = None
        return {"tokens_per_s": round(tps, 1), "quiet_tokens_per_s": round(best, 1), "ratio": round(tps / best, 2),
                "load_avg_1m": load, "other_cpu_percent": other_cpu_percent(cpu_start, cpu_snapshot()),
                "cpu_count": os.cpu_count()}

    def quiet(self, model: str, quantization: str) -> float | None:
        with self._lock:
            return self._best.get((model, quantization))


def describe(verdict: dict | None) -> str:
    """One line for people: '' when the reply was not contended."""
    if not verdict:
        return ""
    parts = [f"CPU contended: {verdict['tokens_per_s']:.1f} tok/s, {verdict['ratio']:.2f} of this model's quiet "
             f"{verdict['quiet_tokens_per_s']:.1f} tok/s"]
    if verdict.get("load_avg_1m") is not None:
        parts.append(f"load average {verdict['load_avg_1m']:.1f} on {verdict.get('cpu_count') or '?'} CPUs")
    if verdict.get("other_cpu_percent") is not None:
        parts.append(f"other processes used {verdict['other_cpu_percent']:.0f}% CPU (100% = one core)")
    return " · ".join(parts)
