"""Stop strings over a stream: text is released only once it cannot be the start of a stop string."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

from backends.base import TextDelta


def partial_suffix(text: str, *markers: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of one of ``markers``: the part of a
    stream to hold back because the next piece may complete a marker."""
    return max((k for m in markers for k in range(min(len(m) - 1, len(text)), 0, -1) if text.endswith(m[:k])),
               default=0)


class StopMatcher:
    def __init__(self, stops: list[str] | None):
        self.stops = [s for s in (stops or []) if s]
        self._pending = ""
        self.hit = False
        self.which: str | None = None  # the stop string that matched

    def push(self, text: str) -> str:
        """Add streamed text; return what can be released now ('' while a stop may be forming)."""
        if not self.stops:
            return text
        if self.hit:
            return ""
        self._pending += text
        found = [(i, s) for s in self.stops if (i := self._pending.find(s)) >= 0]
        cut = min(found)[0] if found else -1
        if cut >= 0:
            self.hit = True
            self.which = next(s for i, s in found if i == cut)
            out, self._pending = self._pending[:cut], ""
            return out
        hold = partial_suffix(self._pending, *self.stops)
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(out):]
        return out

    def flush(self) -> str:
        out, self._pending = ("" if self.hit else self._pending), ""
        return out


def apply_stops(deltas: Iterator[TextDelta], stops: tuple[str, ...], cancel: threading.Event) -> Iterator[TextDelta]:
    """``deltas`` cut before the first stop string: the backend is cancelled there, its remaining
    deltas drained (for the prompt token count), and the stream ends with finish_reason "stop"."""
    if not stops:
        yield from deltas
        return
    matcher = StopMatcher(list(stops))
    for d in deltas:
        out = matcher.push(d.text)
        if matcher.hit:
            cancel.set()
            prompt_tokens, drafted, accepted = d.prompt_tokens, d.draft_tokens, d.accepted_tokens
            for rest in deltas:
                prompt_tokens = rest.prompt_tokens or prompt_tokens
                drafted, accepted = drafted + rest.draft_tokens, accepted + rest.accepted_tokens
            yield replace(d, text=out, finish_reason="stop", prompt_tokens=prompt_tokens, draft_tokens=drafted,
                          accepted_tokens=accepted, stop_sequence=matcher.which)
            return
        if d.finish_reason:
            out += matcher.flush()
        if out or d.tokens or d.finish_reason or d.prompt_tokens or d.logprobs or d.note or d.draft_tokens:
            yield replace(d, text=out)  # logprobs, notes and draft counts go with their tokens
