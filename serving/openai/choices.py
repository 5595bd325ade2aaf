"""One choice of a /v1 answer, built from its ReplyDeltas (the reply already split into thinking,
answer and tool calls by the chat service, ``serving/pieces.py``): the OpenAI shapes of content,
reasoning, tool calls and log probabilities, streamed (``feed`` returns the chunk deltas) or whole
(``message()`` / ``completion()`` once the stream ended)."""

from __future__ import annotations

from typing import Any

from backends.base import TokenLogprob
from serving.openai.convert import ToolPlan
from serving.pieces import ReplyDelta
from serving.tool_calls import ToolCall

FINISH = {"length": "length", "stop": "stop", "cancelled": "stop", None: "stop"}


def finish_reason(reason: str | None) -> str:
    return FINISH.get(reason, "stop")


def chat_logprob(lp: TokenLogprob) -> dict:
    """OpenAI's chat shape of one token's logprob."""
    return {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.token_bytes or lp.token.encode("utf-8")),
            "top_logprobs": [{"token": t, "logprob": p, "bytes": list(t.encode("utf-8"))} for t, p in lp.top]}


class ChatChoice:
    """Pieces -> OpenAI chat choice: reasoning_content, content, tool calls (at most one unless
    the plan allows parallel calls), logprobs in OpenAI's shape."""

    def __init__(self, index: int, plan: ToolPlan, logprobs: bool):
        self.index = index
        self.plan = plan
        self.want_logprobs = logprobs
        self.content: list[str] = []
        self.reasoning_text: list[str] = []
        self.logprobs: list[dict] = []
        self.calls: list[ToolCall] = []
        self.finish: str | None = None

    def feed(self, p: ReplyDelta) -> list[dict]:
        """The chunk deltas (``{"reasoning_content": ...}`` / ``{"content": ...}``, the first ones maybe
        with ``"_logprobs"``, then ``{"tool_calls": [...]}``) this piece releases."""
        out: list[dict] = []
        if p.finish_reason:
            self.finish = p.finish_reason
        if p.reasoning:
            self.reasoning_text.append(p.reasoning)
            out.append({"reasoning_content": p.reasoning})
        if p.text:
            self.content.append(p.text)
            out.append({"content": p.text})
        if self.want_logprobs and p.logprobs:
            lps = [chat_logprob(lp) for lp in p.logprobs]
            self.logprobs += lps
            if not out:
                out.append({})
            out[-1]["_logprobs"] = lps
        if p.tool_calls:
            calls = list(p.tool_calls)
            if not self.plan.parallel:
                calls = calls[:1]
            self.calls = calls
            out += [{"tool_calls": [{"index": i, **c.openai()}]} for i, c in enumerate(calls)]
        return out

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.calls else finish_reason(self.finish)

    def message(self) -> dict:
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.calls:
            msg["content"] = msg["content"] or None
            msg["tool_calls"] = [c.openai() for c in self.calls]
        if self.reasoning_text:
            msg["reasoning_content"] = "".join(self.reasoning_text)
        return {"index": self.index, "message": msg, "finish_reason": self.finish_reason,
                "logprobs": {"content": self.logprobs} if self.want_logprobs else None}


class CompletionChoice:
    """Pieces -> a /v1/completions choice: the raw text and the legacy logprobs shape (tokens,
    token_logprobs, top_logprobs, text_offset; offsets count characters from the completion's start)."""

    def __init__(self, index: int, logprobs: bool):
        self.index = index
        self.want_logprobs = logprobs
        self.text: list[str] = []
        self.offset = 0
        self.lp: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        self.finish: str | None = None

    def feed(self, d: ReplyDelta) -> dict | None:
        """The streamed choice for this piece, or None when it carries nothing."""
        if d.finish_reason:
            self.finish = d.finish_reason
        part = self._logprobs(d.logprobs) if self.want_logprobs and d.logprobs else None
        if d.text:
            self.text.append(d.text)
        if not d.text and part is None:
            return None
        return {"index": self.index, "text": d.text, "logprobs": part, "finish_reason": None}

    def _logprobs(self, lps: tuple[TokenLogprob, ...]) -> dict:
        part: dict[str, list] = {k: [] for k in self.lp}
        for lp in lps:
            part["tokens"].append(lp.token)
            part["token_logprobs"].append(lp.logprob)
            top: dict[str, float] = {}
            for text, logprob in lp.top:  # tokens that render alike (bytes of one character) share a key:
                top.setdefault(text, logprob)  # it keeps the most likely one's logprob, in its place
            part["top_logprobs"].append(top)
            part["text_offset"].append(self.offset)
            self.offset += len(lp.token)
        for k, v in part.items():
            self.lp[k] += v
        return part

    def completion(self) -> dict:
        return {"index": self.index, "text": "".join(self.text), "finish_reason": finish_reason(self.finish),
                "logprobs": self.lp if self.want_logprobs else None}
