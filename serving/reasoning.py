"""Thinking text kept apart from the reply: ``<think>...</think>`` at the start of a reply (what
reasoning models such as Qwen3, DeepSeek-R1 and SmolLM3 write) becomes ``reasoning_content`` on /v1
and a collapsed "Thinking" block in the chat, never part of the answer.

``ReasoningSplitter`` works on a stream: ``feed(text)`` returns (reasoning part, content part) as
soon as each is certain; text that may still be the start of a tag is held back until the next feed
or ``flush()``. A ``<think>`` never closed (the reply was cut while thinking) stays reasoning.
"""

from __future__ import annotations

from backends.stops import partial_suffix

OPEN = "<think>"
CLOSE = "</think>"


class ReasoningSplitter:
    """Split a streamed reply into (reasoning, content).

    ``thinking=True`` starts inside the reasoning (templates that open ``<think>`` in the prompt, so
    the model only writes the closing tag)."""

    def __init__(self, thinking: bool = False):
        # start -> thinking -> after -> content, or start -> content
        self._state = "thinking" if thinking else "start"
        self._pending = ""

    @property
    def thinking(self) -> bool:
        """True while the text fed so far is inside an open ``<think>``."""
        return self._state == "thinking"

    def feed(self, text: str) -> tuple[str, str]:
        reasoning, content = "", ""
        self._pending += text
        while self._pending:
            if self._state == "start":
                stripped = self._pending.lstrip()
                if stripped.startswith(OPEN):
                    self._state, self._pending = "thinking", stripped[len(OPEN):]
                    continue
                if not stripped or OPEN.startswith(stripped):
                    break  # may still become <think>: wait
                self._state = "content"
            if self._state == "after":  # the whitespace after </think> belongs to neither side
                self._pending = self._pending.lstrip()
                if not self._pending:
                    break
                self._state = "content"
            if self._state == "content":
                content += self._pending
                self._pending = ""
                break
            # thinking
            end = self._pending.find(CLOSE)
            if end >= 0:
                reasoning += self._pending[:end]
                self._pending = self._pending[end + len(CLOSE):]
                self._state = "after"
                continue
            hold = partial_suffix(self._pending, CLOSE)
            cut = len(self._pending) - hold
            reasoning += self._pending[:cut]
            self._pending = self._pending[cut:]
            break
        return reasoning, content

    def flush(self) -> tuple[str, str]:
        """The end of the stream: whatever was held back, on the side it was on."""
        pending, self._pending = self._pending, ""
        if self._state == "thinking":
            return pending, ""
        return "", pending


def split_reasoning(text: str, thinking: bool = False) -> tuple[str, str]:
    """A whole reply -> (reasoning, content)."""
    s = ReasoningSplitter(thinking)
    r1, c1 = s.feed(text)
    r2, c2 = s.flush()
    return r1 + r2, c1 + c2
