""""CPU contended": a reply decoded far below its model's quiet speed says so in the chat's stats line and
the Monitor, with the figures (its speed, the quiet one, the load average, other processes' CPU).

The recorder is the app's own (monitoring.metrics.MetricsRecorder); the replies are streams of deltas
spaced by a sleep, the stand-in for a CPU taken by another process (a 20x slower reply, so the verdict
does not depend on how fast this machine is).
"""

from __future__ import annotations

import threading
import time

from backends.base import TextDelta
from monitoring.metrics import MetricsRecorder
from ui.chat_actions import format_stats, stats_message
from ui.monitor import contention_line


def reply(tokens: int = 12, gap_s: float = 0.0):
    def stream():
        yield TextDelta("", prompt_tokens=5)
        for _ in range(tokens):
            if gap_s:
                time.sleep(gap_s)
            yield TextDelta("x", tokens=1)
        yield TextDelta("", finish_reason="stop")

    return stream


def run(rec: MetricsRecorder, stream, model: str = "m"):
    timer = rec.start("chat", model, "Q4_1")
    for _ in rec.timed(timer, stream):
        pass
    return timer.stats


def test_a_reply_far_below_the_models_quiet_speed_is_marked_with_the_figures():
    rec = MetricsRecorder()
    quiet = run(rec, reply(gap_s=0.001))
    assert quiet.cpu_contended is None  # the first reply sets the quiet figure
    slow = run(rec, reply(gap_s=0.03))
    v = slow.cpu_contended
    assert v is not None and v["ratio"] < 0.5
    assert v["quiet_tokens_per_s"] == round(quiet.tokens_per_s, 1) and v["tokens_per_s"] == round(slow.tokens_per_s, 1)
    assert v["load_avg_1m"] is not None and v["other_cpu_percent"] is not None and v["cpu_count"] >= 1
    d = slow.as_dict()
    line = format_stats({**d, "model": "m", "quantization": "Q4_1"})
    assert "CPU contended" in line and f"{v['quiet_tokens_per_s']:.1f} tok/s" in line and "load average" in line
    assert "CPU contended" in stats_message(d)["metadata"]["title"]
    assert "CPU contended" in contention_line([d]) and "CPU contended" in slow.summary()
    # another model has its own quiet figure: its first reply is never judged against this one's
    assert run(rec, reply(gap_s=0.03), model="other").cpu_contended is None
    # a normal reply afterwards clears the Monitor's line
    fine = run(rec, reply(gap_s=0.001))
    assert fine.cpu_contended is None and contention_line([d, fine.as_dict()]) == ""
    assert "CPU contended" not in format_stats({**fine.as_dict(), "model": "m", "quantization": "Q4_1"})


def test_replies_sharing_the_model_with_others_or_too_short_are_not_judged():
    rec = MetricsRecorder()
    run(rec, reply(gap_s=0.001))
    # two at once: each is slower by design (batching), not because of another process
    out = []
    threads = [threading.Thread(target=lambda: out.append(run(rec, reply(gap_s=0.03)))) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert len(out) == 2 and all(s.cpu_contended is None for s in out)
    assert run(rec, reply(tokens=3, gap_s=0.05)).cpu_contended is None  # too few tokens to tell
