"""One /api/chat or /api/generate answer built from its stream's ReplyDeltas (the reply already
split into thinking, text and tool calls by the chat service, ``serving/pieces.py``): Ollama's NDJSON
lines (``done: false`` per piece, then the ``done: true`` line with the done reason and the
timings in nanoseconds), or the one body of ``stream: false``."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

from serving.api.errors import ApiError
from serving.chat_service import ChatStream
from serving.pieces import ReplyDelta

DONE_REASONS = {"length": "length"}  # anything else the engine reports is a stop


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def timings(stats: dict[str, Any]) -> dict[str, int]:
    """A request's stats as Ollama's counts and durations (nanoseconds)."""
    e2e, ttft = stats.get("e2e_s") or 0.0, stats.get("ttft_s") or 0.0
    return {"total_duration": int(e2e * 1e9), "load_duration": 0,
            "prompt_eval_count": stats.get("prompt_tokens", 0), "prompt_eval_duration": int(ttft * 1e9),
            "eval_count": stats.get("completion_tokens", 0), "eval_duration": int(max(0.0, e2e - ttft) * 1e9)}


class OllamaReply:
    """What chat and generate share: the pieces kept, the envelope, the last line."""

    def __init__(self, model: str, streams: Sequence[ChatStream]):
        self.model = model
        self.stream = streams[0]
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.calls: list[dict] = []
        self.finish: str | None = None
        self.stats: dict[str, Any] | None = None

    def envelope(self, done: bool, **fields: Any) -> dict:
        return {"model": self.model, "created_at": now(), **fields, "done": done}

    def head(self) -> list[dict]:
        return []

    def keep(self, delta: ReplyDelta) -> None:
        if delta.finish_reason:
            self.finish = delta.finish_reason
        if delta.stats is not None:
            self.stats = delta.stats
        self.text.append(delta.text)
        self.thinking.append(delta.reasoning)
        self.calls += [{"function": {"name": c.name, "arguments": json.loads(c.arguments)}} for c in delta.tool_calls]

    def last(self, **fields: Any) -> dict:
        stats = self.stats if self.stats is not None else self.stream.stats.as_dict()
        return {**self.envelope(True, **fields), "done_reason": DONE_REASONS.get(self.finish or "", "stop"),
                **timings(stats)}

    def failed(self, err: ApiError) -> list[dict]:
        return []  # the error line ends an Ollama stream


class ChatReply(OllamaReply):
    def message(self, text: str, thinking: str, calls: list[dict]) -> dict:
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            msg["thinking"] = thinking
        if calls:
            msg["tool_calls"] = calls
        return msg

    def feed(self, index: int, delta: ReplyDelta) -> Iterator[dict]:
        before = len(self.calls)
        self.keep(delta)
        if delta.text or delta.reasoning or len(self.calls) > before:
            yield self.envelope(False, message=self.message(delta.text, delta.reasoning, self.calls[before:]))

    def tail(self) -> list[dict]:
        return [self.last(message=self.message("", "", []))]

    def body(self) -> dict:
        return self.last(message=self.message("".join(self.text), "".join(self.thinking), self.calls))


class GenerateReply(OllamaReply):
    def fields(self, text: str, thinking: str) -> dict:
        return {"response": text, **({"thinking": thinking} if thinking else {})}

    def feed(self, index: int, delta: ReplyDelta) -> Iterator[dict]:
        self.keep(delta)
        if delta.text or delta.reasoning:
            yield self.envelope(False, **self.fields(delta.text, delta.reasoning))

    def tail(self) -> list[dict]:
        return [self.last(response="")]

    def body(self) -> dict:
        return self.last(**self.fields("".join(self.text), "".join(self.thinking)))
