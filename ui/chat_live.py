"""Replies that keep generating when their page goes away (no gradio here).

A chat turn's generation runs in its own thread (a ``LiveTurn``), not in the Gradio event that
shows it: the event only follows the turn's progress. When the browser reloads or the connection
drops, Gradio closes the event's generator, but the turn goes on; the page that comes back finds
the turn by the id its saved chat holds (the tree node's ``pending``) and follows it again, still
streaming or finished. Stop is different from a disconnect: it cancels the turn itself (the model
stops within a token), and the reply is kept as far as it got, marked stopped.

What happens when the page is closed for good, and the bounds:
- a detached turn (nobody following it) generates on, at most ``DETACHED_MAX_S`` seconds after its
  page went away (and never more than its max_new_tokens); at most ``MAX_DETACHED`` turns run
  detached at once: beyond that, the newest detached one is stopped as if Stop had been pressed;
- an ended turn's result (the reply's messages and stats, a few KB) is kept in memory for
  ``KEEP_S`` seconds, at most ``MAX_KEPT`` of them (the oldest go first), so the chat's next visit
  within that time shows the reply; after that, or after a server restart, the question stays
  in the chat without the reply (Regenerate makes one).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from serving.chat_service import Turn
from ui.chat_turns import STATS_TITLE_MARK, title_of, turn_messages

DETACHED_MAX_S = 600.0
MAX_DETACHED = 4
KEEP_S = 3600.0
MAX_KEPT = 64


@dataclass(eq=False)
class LiveTurn:
    """One generating turn. ``job`` is the UI's TurnJob (what it runs, where the reply goes);
    ``state``: "running", then "done", "stopped" or "failed"; ``group``: the assistant messages so
    far (None before anything came); ``stats``: the request's figures once ended; ``seq`` grows
    with every change (followers wait on ``cond`` for it)."""

    job: Any
    turn: Turn
    state: str = "running"
    group: list[dict] | None = None
    stats: dict | None = None
    error: BaseException | None = None
    seq: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)
    settings: dict = field(default_factory=dict)  # the system prompt and sampling values it runs with
    followers: int = 0
    detached_at: float | None = None
    ended_at: float | None = None

    @property
    def ended(self) -> bool:
        return self.state != "running"

    def cancel(self) -> None:
        """Stop the model within a token (or at its first token, if it is still waiting for a slot)."""
        self.stop.set()
        stream = self.turn.stream
        if stream is not None:
            stream.cancel.set()

    def wait_change(self, seen: int, timeout: float) -> int:
        with self.cond:
            self.cond.wait_for(lambda: self.seq != seen or self.ended, timeout=timeout)
            return self.seq

    def _publish(self, **changes: Any) -> None:
        with self.cond:
            for key, value in changes.items():
                setattr(self, key, value)
            self.seq += 1
            self.cond.notify_all()


def stopped_group(group: list[dict], stats: dict, stats_message: Callable[[dict], dict]) -> list[dict]:
    """A stopped reply's messages: as far as it got, its stats line (marked stopped) last, every
    block closed."""
    group = [m for m in group if not title_of(m).startswith(STATS_TITLE_MARK)] + [stats_message(stats)]
    return [dict(m, metadata={**m["metadata"], "status": "done"}) if m.get("metadata") else m for m in group]


class LiveTurns:
    """The turns generating now and those that ended recently (see the module's bounds)."""

    def __init__(self, stats_message: Callable[[dict], dict]):
        self.stats_message = stats_message
        self.running: OrderedDict[str, LiveTurn] = OrderedDict()
        self.kept: OrderedDict[str, LiveTurn] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, job: Any, turn: Turn, pieces: Iterator, settings: dict | None = None) -> LiveTurn:
        """Generate ``pieces`` for ``job`` in a thread of its own."""
        live = LiveTurn(job, turn, settings=dict(settings or {}))
        with self._lock:
            self.running[job.id] = live
        threading.Thread(target=self._work, args=(live, pieces), name=f"chat-turn-{job.id[:8]}",
                         daemon=True).start()
        return live

    def get(self, turn_id: str | None) -> LiveTurn | None:
        if not turn_id:
            return None
        with self._lock:
            self._prune()
            return self.running.get(turn_id) or self.kept.get(turn_id)

    def attach(self, live: LiveTurn) -> None:
        with self._lock:
            live.followers += 1
            live.detached_at = None

    def detach(self, live: LiveTurn) -> None:
        """A follower went away (a reload, a dropped connection): the turn goes on, within bounds."""
        with self._lock:
            live.followers = max(live.followers - 1, 0)
            if live.followers or live.ended:
                return
            live.detached_at = time.monotonic()
            detached = [t for t in self.running.values() if t.detached_at is not None and not t.ended]
            over = len(detached) > MAX_DETACHED
        if over:
            live.cancel()

    def _work(self, live: LiveTurn, pieces: Iterator) -> None:
        job, turn = live.job, live.turn
        reasoning, content = job.reasoning, job.prefix
        close = getattr(pieces, "close", lambda: None)
        final: dict[str, Any] = {"state": "failed", "error": RuntimeError("The reply ended unexpectedly.")}
        try:
            for piece in pieces:
                if live.stop.is_set() or (live.detached_at is not None
                                          and time.monotonic() - live.detached_at > DETACHED_MAX_S):
                    break
                reasoning, content = reasoning + piece.reasoning, content + piece.text
                stats = piece.stats
                group = turn_messages(content, reasoning, turn.note, self.stats_message(stats) if stats else None,
                                      thinking_done=bool(stats) or not piece.thinking)
                if stats:
                    live._publish(group=group, stats=dict(stats))
                    break
                live._publish(group=group)
            close()  # a stopped stream's stats are final once it is closed
            final = {"state": "done"} if live.stats is not None else self._stopped(live)
        except Exception as exc:  # shown by the follower (a toast), the reply kept as far as it got
            final = {"state": "failed", "error": exc}
        finally:
            close()
            with self._lock:  # moved before the end is published: a follower then finds it ended and kept
                self.running.pop(job.id, None)
                self.kept[job.id] = live
                self._prune()
            live._publish(ended_at=time.monotonic(), **final)

    def _stopped(self, live: LiveTurn) -> dict[str, Any]:
        """The end of a stopped turn: its reply as far as it got, with the stream's stats marked
        stopped (nothing, if nothing came)."""
        if live.group is None or live.turn.stream is None:
            return {"state": "stopped"}
        stats = live.turn.stream.stats.as_dict()
        stats["finish_reason"] = "cancelled"
        if live.turn.note:
            stats["note"] = live.turn.note
        return {"state": "stopped", "stats": stats, "group": stopped_group(live.group, stats, self.stats_message)}

    def _prune(self) -> None:
        now = time.monotonic()
        for key, live in list(self.kept.items()):
            if len(self.kept) > MAX_KEPT or (live.ended_at is not None and now - live.ended_at > KEEP_S):
                self.kept.pop(key, None)
