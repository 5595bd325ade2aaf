"""OpenAI's generating endpoints as translations on the pipeline: /v1/chat/completions and
/v1/completions. Each is an ``Endpoint`` (schema, conversion to ChatRequests) and a ``Reply`` that
builds its bodies from the choices' deltas: ``chat.completion`` / ``chat.completion.chunk`` and
``text_completion``, with usage, the role chunk first, a finish chunk per choice, and
``data: [DONE]`` after the last (``OPENAI_SSE``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from backends.base import ChatRequest
from serving.api.errors import ApiError
from serving.api.pipeline import Endpoint, Pipeline
from serving.api.stream import EventFormat, sse_data
from serving.chat_service import ChatStream
from serving.openai.choices import ChatChoice, CompletionChoice, finish_reason
from serving.openai.convert import ToolPlan, choices_of, to_chat_request, to_completion_requests
from serving.openai.errors import OPENAI_ERRORS
from serving.openai.schema import ChatCompletionRequest, CompletionRequest, SamplerFields
from serving.pieces import ReplyDelta

OPENAI_SSE = EventFormat("text/event-stream", sse_data, "data: [DONE]\n\n")


class OpenAIReply:
    """What a chat and a text completion share: the id, the envelope of every body and chunk
    (id, object, created, model, choices[, usage]) and the usage over the choices."""

    prefix = ""  # of the id
    chunk_object = ""  # the object of a streamed chunk

    def __init__(self, body: SamplerFields, model: str, streams: Sequence[ChatStream],
                 shares_prompt: Callable[[int], bool]):
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.streams = streams
        self.shares_prompt = shares_prompt
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def envelope(self, obj: str, choices: list[dict], usage: dict | None = None) -> dict:
        out: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                               "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out

    def usage(self) -> dict:
        """Usage over the choices; the prompt of choices that share one is counted once."""
        stats = [s.stats for s in self.streams]
        prompt = sum(s.prompt_tokens for i, s in enumerate(stats) if self.shares_prompt(i))
        completion = sum(s.completion_tokens for s in stats)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def ended(self, index: int, delta: ReplyDelta) -> bool:
        """``delta`` finished its choice (a stream the server cut ends with its error instead)."""
        return bool(delta.finish_reason) and not self.streams[index].cut

    def tail(self) -> list[dict]:
        return [self.envelope(self.chunk_object, [], self.usage())] if self.include_usage else []


class ChatReply(OpenAIReply):
    prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def __init__(self, body: ChatCompletionRequest, plan: ToolPlan, model: str, streams: Sequence[ChatStream]):
        super().__init__(body, model, streams, lambda i: i == 0)  # one prompt for every choice
        self.states = [ChatChoice(i, plan, bool(body.logprobs)) for i in range(body.n)]

    @staticmethod
    def _choice(index: int, delta: dict, finish: str | None = None) -> dict:
        lps = delta.pop("_logprobs", None)
        return {"index": index, "delta": delta, "finish_reason": finish,
                "logprobs": {"content": lps} if lps is not None else None}

    def head(self) -> list[dict]:
        return [self.envelope(self.chunk_object, [self._choice(s.index, {"role": "assistant", "content": ""})])
                for s in self.states]

    def feed(self, index: int, delta: ReplyDelta) -> Iterator[dict]:
        for part in self.states[index].feed(delta):
            yield self.envelope(self.chunk_object, [self._choice(index, part)])
        if self.ended(index, delta):
            yield self.envelope(self.chunk_object, [self._choice(index, {}, self.states[index].finish_reason)])

    def failed(self, err: ApiError) -> list[dict]:
        return [self.envelope(self.chunk_object, [self._choice(s.index, {}, "error") for s in self.states])]

    def body(self) -> dict:
        return self.envelope("chat.completion", [s.message() for s in self.states], self.usage())


class CompletionReply(OpenAIReply):
    prefix = "cmpl"
    chunk_object = "text_completion"

    def __init__(self, body: CompletionRequest, model: str, streams: Sequence[ChatStream]):
        n = body.n
        super().__init__(body, model, streams, lambda i: i % n == 0)  # each prompt's n choices share it
        self.states = [CompletionChoice(i, body.logprobs is not None) for i in range(len(streams))]

    @staticmethod
    def _end(index: int, reason: str) -> dict:
        return {"index": index, "text": "", "logprobs": None, "finish_reason": reason}

    def head(self) -> list[dict]:
        return []

    def feed(self, index: int, delta: ReplyDelta) -> Iterator[dict]:
        part = self.states[index].feed(delta)
        if part is not None:
            yield self.envelope(self.chunk_object, [part])
        if self.ended(index, delta):
            yield self.envelope(self.chunk_object, [self._end(index, finish_reason(self.states[index].finish))])

    def failed(self, err: ApiError) -> list[dict]:
        return [self.envelope(self.chunk_object, [self._end(s.index, "error") for s in self.states])]

    def body(self) -> dict:
        return self.envelope("text_completion", [s.completion() for s in self.states], self.usage())


class OpenAIEndpoint(Endpoint):
    errors = OPENAI_ERRORS
    format = OPENAI_SSE
    label = "v1"


class ChatCompletions(OpenAIEndpoint):
    schema = ChatCompletionRequest

    @staticmethod
    def convert(body: ChatCompletionRequest, pipe: Pipeline) -> tuple[list[ChatRequest], ToolPlan]:
        pipe.check_choices(body.n, "n", "n")
        chat_request, plan = to_chat_request(body, pipe.chat.limits)
        return choices_of(chat_request, body.n), plan

    @staticmethod
    def reply(body: ChatCompletionRequest, plan: ToolPlan, model: str, streams: Sequence[ChatStream]) -> ChatReply:
        return ChatReply(body, plan, model, streams)


class Completions(OpenAIEndpoint):
    schema = CompletionRequest

    @staticmethod
    def convert(body: CompletionRequest, pipe: Pipeline) -> tuple[list[ChatRequest], None]:
        n_prompts = 1 if isinstance(body.prompt, str) else len(body.prompt)
        what = f"{n_prompts} prompts x n={body.n}" if n_prompts > 1 else "n"
        pipe.check_choices(n_prompts * body.n, what, "prompt" if n_prompts > 1 else "n")
        return to_completion_requests(body, pipe.chat.limits), None

    @staticmethod
    def reply(body: CompletionRequest, plan: None, model: str, streams: Sequence[ChatStream]) -> CompletionReply:
        return CompletionReply(body, model, streams)
