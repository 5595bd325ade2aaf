"""One /v1/messages answer built from its stream's ReplyDeltas (the reply already split into
thinking, text and tool calls by the chat service, ``serving/pieces.py``): a ``message`` body with
its content blocks, or Anthropic's event sequence: ``message_start``; per block
``content_block_start``, its deltas (``thinking_delta``, ``text_delta``, ``input_json_delta``) and
``content_block_stop``; ``message_delta`` with the stop reason (``end_turn``, ``max_tokens``,
``stop_sequence`` with the stop string that matched, ``tool_use``) and usage; ``message_stop``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from serving.anthropic.convert import ToolPlan
from serving.api.errors import ApiError
from serving.chat_service import ChatStream
from serving.pieces import ReplyDelta
from serving.tool_calls import ToolCall

STOP_REASONS = {"length": "max_tokens"}  # anything else the engine reports ends the turn


def tool_use_id(call: ToolCall) -> str:
    return "toolu_" + (call.id.removeprefix("call_") or uuid.uuid4().hex[:24])


class MessageReply:
    def __init__(self, plan: ToolPlan, model: str, streams: Sequence[ChatStream]):
        self.id = "msg_" + uuid.uuid4().hex[:24]
        self.model = model
        self.plan = plan
        self.stream = streams[0]
        self.blocks: list[dict[str, Any]] = []  # the content so far, Anthropic-shaped
        self.open: str | None = None  # the type of the block being streamed ("text" / "thinking")
        self.calls: list[ToolCall] = []
        self.finish: str | None = None
        self.stop_sequence: str | None = None

    # --- the message -------------------------------------------------------------------------------

    def usage(self) -> dict:
        stats = self.stream.stats
        return {"input_tokens": stats.prompt_tokens, "output_tokens": stats.completion_tokens}

    @property
    def stop_reason(self) -> str:
        if self.calls:
            return "tool_use"
        return "stop_sequence" if self.stop_sequence else STOP_REASONS.get(self.finish or "", "end_turn")

    def message(self, content: list[dict], stop_reason: str | None, usage: dict) -> dict:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": stop_reason, "stop_sequence": self.stop_sequence if stop_reason else None,
                "usage": usage}

    def body(self) -> dict:
        return self.message(self.blocks, self.stop_reason, self.usage())

    # --- the events ---------------------------------------------------------------------------------

    def head(self) -> list[dict]:
        usage = {"input_tokens": self.stream.stats.prompt_tokens, "output_tokens": 0}
        return [{"type": "message_start", "message": self.message([], None, usage)}]

    def _close(self) -> Iterator[dict]:
        if self.open is not None:
            self.open = None
            yield {"type": "content_block_stop", "index": len(self.blocks) - 1}

    def _add(self, kind: str, text: str) -> Iterator[dict]:
        """``text`` appended to the open block of ``kind`` (one is started when needed)."""
        if self.open != kind:
            yield from self._close()
            block = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "",
                                                                         "signature": ""}
            self.blocks.append(block)
            self.open = kind
            yield {"type": "content_block_start", "index": len(self.blocks) - 1, "content_block": dict(block)}
        self.blocks[-1][kind] += text
        delta = {"type": "text_delta", "text": text} if kind == "text" else {"type": "thinking_delta",
                                                                             "thinking": text}
        yield {"type": "content_block_delta", "index": len(self.blocks) - 1, "delta": delta}

    def _tool_uses(self, calls: Sequence[ToolCall]) -> Iterator[dict]:
        yield from self._close()
        if not self.plan.parallel:
            calls = calls[:1]
        self.calls = list(calls)
        for call in calls:
            block = {"type": "tool_use", "id": tool_use_id(call), "name": call.name,
                     "input": json.loads(call.arguments)}
            self.blocks.append(block)
            index = len(self.blocks) - 1
            yield {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}}
            yield {"type": "content_block_delta", "index": index,
                   "delta": {"type": "input_json_delta", "partial_json": call.arguments}}
            yield {"type": "content_block_stop", "index": index}

    def feed(self, index: int, delta: ReplyDelta) -> Iterator[dict]:
        if delta.finish_reason:
            self.finish = delta.finish_reason
            self.stop_sequence = delta.stop_sequence
        if delta.reasoning:
            yield from self._add("thinking", delta.reasoning)
        if delta.text:
            yield from self._add("text", delta.text)
        if delta.tool_calls:
            yield from self._tool_uses(delta.tool_calls)

    def tail(self) -> list[dict]:
        out = list(self._close())
        usage = self.usage()
        return out + [{"type": "message_delta",
                       "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                       "usage": {"output_tokens": usage["output_tokens"], "input_tokens": usage["input_tokens"]}},
                      {"type": "message_stop"}]

    def failed(self, err: ApiError) -> list[dict]:
        return []  # the error event ends an Anthropic stream
