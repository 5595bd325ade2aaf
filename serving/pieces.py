"""The streamed reply as typed pieces, parsed once in the chat service for every transport.

An engine streams TextDeltas: raw text as the model writes it. ``ReplyParser`` (one per open stream,
run by ``ChatStream``) turns each into a ``ReplyDelta``: the thinking split off (``<think>...</think>``,
serving/reasoning.py), tool calls parsed when the request offers tools (serving/tool_calls.py), the
raw text kept beside them; a raw continuation (the Notebook, /complete, /v1/completions) is left as
it is. The last piece of a stream carries the finish reason, the parsed tool calls and the request's
stats. The /v1 choices, Gradio's /chat and /complete, the chat UI's turn and the Notebook only map
pieces to their own shapes: none of them parses the reply's text again.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from backends.base import ChatRequest, TextDelta, TokenLogprob
from serving.reasoning import ReasoningSplitter
from serving.tool_calls import ToolCall, ToolCallStream, tool_names


@dataclass(frozen=True)
class ReplyDelta:
    """One piece of a streamed reply. ``text``: the answer (thinking and tool-call markup taken out;
    a raw continuation's whole text); ``reasoning``: thinking text; ``tool_calls``: the calls the
    reply made (on the last piece); ``logprobs``: one per token of ``raw`` when the request asked;
    ``finish_reason`` and ``stats`` (the request's figures, ``RequestStats.as_dict()``): on the last
    piece; ``raw``: the model's text as generated (what a raw transport shows); ``thinking``: the
    reply is inside an open ``<think>`` once this piece is through; ``stop_sequence``: on the last
    piece, the request's stop string that ended the reply, if one did."""

    text: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None
    stats: dict[str, Any] | None = None
    raw: str = ""
    thinking: bool = False
    stop_sequence: str | None = None

    def then(self, later: ReplyDelta) -> ReplyDelta:
        """This piece and ``later`` as one (a stream's updates coalesced for a slow transport)."""
        return ReplyDelta(self.text + later.text, self.reasoning + later.reasoning, self.tool_calls + later.tool_calls,
                          self.logprobs + later.logprobs, later.finish_reason or self.finish_reason,
                          self.stats if later.stats is None else later.stats, self.raw + later.raw, later.thinking,
                          later.stop_sequence or self.stop_sequence)


class ReplyParser:
    """TextDeltas -> ReplyDeltas for one stream of ``request``: ``feed`` for each delta, then
    ``end(stats)`` once the generation is over (the tool calls held until then, the finish reason,
    the stats). A chat reply is split into thinking and answer, and searched for tool calls when
    the request offers tools; a raw continuation (``request.prompt``) is passed through."""

    def __init__(self, request: ChatRequest):
        chat = request.prompt is None
        self._reasoning = ReasoningSplitter() if chat else None
        names = tool_names(request.tools) if chat else []
        self._tools = ToolCallStream(names) if names else None
        self._flushed = False
        self._finish: str | None = None
        self._stop: str | None = None

    def feed(self, d: TextDelta) -> ReplyDelta:
        if d.finish_reason:
            self._finish = d.finish_reason
            self._stop = d.stop_sequence
        if self._reasoning is None:
            return ReplyDelta(d.text, logprobs=d.logprobs, raw=d.text)
        thought, said = self._reasoning.feed(d.text)
        if d.finish_reason:  # the end: whatever the splitter held back, on its side
            thought2, said2 = self._flush()
            thought, said = thought + thought2, said + said2
        return ReplyDelta(self._content(said), thought, logprobs=d.logprobs, raw=d.text,
                          thinking=self._reasoning.thinking)

    def end(self, stats: dict[str, Any] | None) -> ReplyDelta:
        """The last piece: text still held (a stream that ended without a finish reason, or content
        that turned out not to be a tool call), the tool calls, the finish reason and ``stats``."""
        thought, said = self._flush()
        text = self._content(said)
        calls: list[ToolCall] = []
        if self._tools is not None:
            rest, calls = self._tools.finish()
            text += rest
        return ReplyDelta(text, thought, tuple(calls), finish_reason=self._finish, stats=stats,
                          thinking=self._reasoning is not None and self._reasoning.thinking, stop_sequence=self._stop)

    def _flush(self) -> tuple[str, str]:
        if self._reasoning is None or self._flushed:
            return "", ""
        self._flushed = True
        return self._reasoning.flush()

    def _content(self, said: str) -> str:
        return self._tools.feed(said) if self._tools is not None and said else said


def text_so_far(pieces: Generator[ReplyDelta, None, None]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(the reply so far as the model wrote it, {}) per piece, then (the reply, stats) for the last:
    the shape of Gradio's /chat and /complete. Closing this closes ``pieces`` (the generation stops)."""
    reply = ""
    try:
        for piece in pieces:
            reply += piece.raw
            yield reply, piece.stats or {}
    finally:
        pieces.close()
