"""One choice of a /v1 answer, built from its TextDeltas: the OpenAI shapes of content, reasoning,
tool calls and log probabilities, streamed (``feed`` returns the chunk deltas) or whole
(``message()`` / ``completion()`` once the stream ended)."""

from __future__ import annotations

from typing import Any

from backends.base import TextDelta, TokenLogprob
from serving.openai.convert import ToolPlan
from serving.reasoning import ReasoningSplitter
from serving.tool_calls import ToolCall, ToolCallStream

FINISH = {"length": "length", "stop": "stop", "cancelled": "stop", None: "stop"}


def finish_reason(reason: str | None) -> str:
    return FINISH.get(reason, "stop")


def chat_logprob(lp: TokenLogprob) -> dict:
    """OpenAI's chat shape of one token's logprob."""
    return {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.token_bytes or lp.token.encode("utf-8")),
            "top_logprobs": [{"token": t, "logprob": p, "bytes": list(t.encode("utf-8"))} for t, p in lp.top]}


class ChatChoice:
    """Deltas -> OpenAI chat choice: reasoning split off, tool calls parsed (when tools are on),
    logprobs in OpenAI's shape."""

    def __init__(self, index: int, plan: ToolPlan, logprobs: bool):
        self.index = index
        self.plan = plan
        self.want_logprobs = logprobs
        self.reasoning = ReasoningSplitter()
        self.tools = ToolCallStream(plan.names) if plan.names else None
        self.content: list[str] = []
        self.reasoning_text: list[str] = []
        self.logprobs: list[dict] = []
        self.calls: list[ToolCall] = []
        self.finish: str | None = None

    def _content(self, text: str) -> str:
        return self.tools.feed(text) if self.tools is not None else text

    def feed(self, d: TextDelta) -> list[dict]:
        """The chunk deltas (``{"content": ...}`` / ``{"reasoning_content": ...}``, each maybe with
        ``"_logprobs"``) this delta releases."""
        out: list[dict] = []
        thought, said = self.reasoning.feed(d.text)
        if d.finish_reason:
            self.finish = d.finish_reason
            t2, s2 = self.reasoning.flush()
            thought, said = thought + t2, said + s2
        content = self._content(said) if said else ""
        if thought:
            self.reasoning_text.append(thought)
            out.append({"reasoning_content": thought})
        if content:
            self.content.append(content)
            out.append({"content": content})
        if self.want_logprobs and d.logprobs:
            lps = [chat_logprob(lp) for lp in d.logprobs]
            self.logprobs += lps
            if not out:
                out.append({})
            out[-1]["_logprobs"] = lps
        if d.finish_reason:
            out += self._end()
        return out

    def _end(self) -> list[dict]:
        if self.tools is None:
            return []
        rest, calls = self.tools.finish()
        if not self.plan.parallel:
            calls = calls[:1]
        self.calls = calls
        out = []
        if rest:
            self.content.append(rest)
            out.append({"content": rest})
        for i, c in enumerate(calls):
            out.append({"tool_calls": [{"index": i, **c.openai()}]})
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
    """Deltas -> a /v1/completions choice: the raw text and the legacy logprobs shape (tokens,
    token_logprobs, top_logprobs, text_offset; offsets count characters from the completion's start)."""

    def __init__(self, index: int, logprobs: bool):
        self.index = index
        self.want_logprobs = logprobs
        self.text: list[str] = []
        self.offset = 0
        self.lp: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        self.finish: str | None = None

    def feed(self, d: TextDelta) -> dict | None:
        """The streamed choice for this delta, or None when it carries nothing."""
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
