"""One pipeline for every request of the API edge: parse -> convert -> open -> respond (streamed or
collected), under one try/except whose errors the dialect only shapes (``errors.py``).

A dialect (OpenAI's chat and text completions, Anthropic's messages, Ollama's chat and generate) is
a translation and nothing more, in its own package. For each generating endpoint it supplies an
``Endpoint``: its request schema, the conversion of a body to ChatRequests for the shared
ChatService (limits, slots, stop strings, timing, the same path as the UI), the ``Reply`` that turns
the streams' deltas into its response body or its stream events, its error shape and its stream
format. Everything else (parsing, model resolution, opening the streams, waiting for the first
token, collecting, in-band errors, cancelling when the client leaves) happens here once, the same
for every dialect.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from backends.base import ChatRequest
from backends.errors import InvalidRequest
from backends.manager import ModelManager
from serving import model_names
from serving.api.errors import ApiError, ErrorShape, api_error, invalid_body
from serving.api.stream import Choices, EventFormat, event_stream
from serving.chat_service import ChatService, ChatStream
from serving.disconnect import run_until_disconnect
from serving.pieces import ReplyDelta
from serving.request_json import check_body
from serving.requests import check_chars, clean_text

B = TypeVar("B", bound=BaseModel)

MAX_EMBED_INPUTS = 256


async def parse_body(request: Request, schema: type[B]) -> B:
    """The body as ``schema``, or the InvalidRequest saying what is wrong with it (``check_body``
    first: a lone surrogate or a too-deep nesting anywhere in it)."""
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("The request body is not valid JSON.") from None
    except RecursionError:
        raise InvalidRequest("The request body nests JSON too deeply.") from None
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    check_body(raw)  # every string valid Unicode, nothing nested too deep: before any field is read
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise invalid_body(exc) from None
    except RecursionError:
        raise InvalidRequest("The request body nests JSON too deeply.") from None


class Reply(Protocol):
    """One request's answer in its dialect's shape, built from the deltas of its streams (one per
    request the conversion made, in that order). Streamed: ``head``, ``feed`` per delta, ``tail``;
    or, after an error in band, ``failed``. Collected: ``feed`` per delta (its events dropped), then
    ``body``."""

    def head(self) -> Iterable[dict]: ...

    def feed(self, index: int, delta: ReplyDelta) -> Iterable[dict]: ...

    def tail(self) -> Iterable[dict]: ...

    def failed(self, err: ApiError) -> Iterable[dict]: ...

    def body(self) -> dict: ...


class Endpoint:
    """A generating endpoint of one dialect: what the pipeline cannot know about it. A dialect
    subclasses it and supplies ``schema``, ``errors``, ``format``, ``label``, ``convert`` and
    ``reply``; ``model`` and ``streams`` read the body's ``model`` and ``stream`` unless it says otherwise."""

    schema: type[BaseModel]  # the request body
    errors: ErrorShape
    format: EventFormat  # how its stream is written
    label: str  # the endpoint label of its metrics and request log

    @staticmethod
    def model(body: Any) -> str:
        """The model the body names."""
        return body.model

    @staticmethod
    def streams(body: Any) -> bool:
        return bool(body.stream)

    def convert(self, body: Any, pipe: Pipeline) -> tuple[list[ChatRequest], Any]:
        """The ChatRequests to run (one per stream) and what ``reply`` needs to know of the conversion."""
        raise NotImplementedError

    def reply(self, body: Any, plan: Any, model: str, streams: Sequence[ChatStream]) -> Reply:
        raise NotImplementedError


class Pipeline:
    """``pooled``: the pool model one request runs on (``on_model``), None for the chat's model."""

    def __init__(self, manager: ModelManager, chat: ChatService, pooled: str | None = None):
        self.manager = manager
        self.chat = chat
        self.pooled = pooled

    def on_model(self, pooled: str | None) -> Pipeline:
        """The pipeline as one request's conversion sees it: its checks count ``pooled``'s slots."""
        return Pipeline(self.manager, self.chat, pooled)

    def resolve_model(self, name: str) -> tuple[str, str | None]:
        """(the name to answer with, the pool model to run on, or None for the chat's model)."""
        return model_names.resolve_model(self.manager, name)

    def check_choices(self, count: int, what: str, param: str) -> None:
        slots = self.manager.slots_of(self.pooled)
        if count > slots:
            raise InvalidRequest(f"{param}: {what} asks for {count} generations, but this model runs at most {slots} "
                                 "at once (its batch slots: load it with a larger --parallel).", param)

    @staticmethod
    def client_of(request: Request) -> str | None:
        return getattr(request.state, "client_id", None) or (request.client.host if request.client else None)

    # --- generation ----------------------------------------------------------------------------

    async def generate(self, endpoint: Endpoint, request: Request) -> Response:
        """parse -> convert -> open -> respond: the streamed answer, or the whole body once every
        stream ended. Any failure before the first streamed byte is a plain error answer."""
        t0 = time.perf_counter()
        choices: Choices | None = None
        try:
            body = await parse_body(request, endpoint.schema)
            model, pooled = self.resolve_model(endpoint.model(body))
            requests, plan = endpoint.convert(body, self.on_model(pooled))
            choices = await self._open(requests, endpoint.label, request, t0, pooled)
            reply = endpoint.reply(body, plan, model, choices.streams)
            if endpoint.streams(body):
                return event_stream(self._events(reply, choices, endpoint.errors), endpoint.format, choices.cancel)
            async for index, delta in choices:
                for _ in reply.feed(index, delta):  # the reply keeps what it needs; events are for streams
                    pass
            return JSONResponse(reply.body())
        except Exception as exc:  # a typed error or a bug: either way an answer in the dialect's shape
            if choices is not None:
                choices.cancel()
            return endpoint.errors.response(api_error(exc))

    async def _open(self, requests: list[ChatRequest], label: str, request: Request, t0: float,
                    pooled: str | None = None) -> Choices:
        client = self.client_of(request)
        if pooled is None:
            streams = self.chat.open_many(requests, endpoint=label, client=client, t0=t0)
        else:  # a pool model may have to load first: in a worker thread
            streams = await run_in_threadpool(lambda: self.chat.open_many(requests, endpoint=label, client=client,
                                                                          t0=t0, model=pooled))
        choices = Choices(streams)
        await choices.start()
        return choices

    @staticmethod
    async def _events(reply: Reply, choices: Choices, errors: ErrorShape) -> AsyncIterator[dict]:
        for event in reply.head():
            yield event
        try:
            async for index, delta in choices:
                for event in reply.feed(index, delta):
                    yield event
            for event in reply.tail():
                yield event
        except Exception as exc:  # after the first byte: reported in band, then the reply ends its own way
            err = api_error(exc, "stream")
            yield errors.event(err)
            for event in reply.failed(err):
                yield event

    # --- the other endpoints -------------------------------------------------------------------

    async def answer(self, request: Request, schema: type[B], work: Callable[[B, Request, float], Awaitable[dict]],
                     errors: ErrorShape) -> Response:
        """parse -> ``work(body, request, t0)`` -> its JSON body, under the same error mapping."""
        t0 = time.perf_counter()
        try:
            body = await parse_body(request, schema)
            return JSONResponse(await work(body, request, t0))
        except Exception as exc:
            return errors.response(api_error(exc))

    async def embed(self, texts: list[str], request: Request, t0: float,
                    pooled: str | None = None, label: str = "embeddings") -> tuple[list, int]:
        """Embedding vectors of ``texts`` and how many tokens they are, after the server's limits,
        in the client's rate-limit slot, stopped if the client goes away; ``label``: the endpoint
        of its metrics."""
        if len(texts) > MAX_EMBED_INPUTS:
            raise InvalidRequest(f"input: at most {MAX_EMBED_INPUTS} texts per request.", "input")
        total = 0
        for i, t in enumerate(texts):
            clean_text(t, "input")
            if not t:
                raise InvalidRequest(f"input[{i}] is empty.", "input")
            total += len(t)
        check_chars(total, "input", "input", self.chat.limits)
        tokens = await run_in_threadpool(self._count_tokens, texts, pooled)
        budget = self.chat.limits.max_embed_tokens
        if tokens > budget:
            raise InvalidRequest(f"input is {tokens:,} tokens long; this server embeds at most {budget:,} tokens "
                                 "per request (--max-embed-tokens): split it into smaller requests.", "input")
        client = self.client_of(request)
        cancel = threading.Event()
        with self.chat.limiter.slot(client):
            vectors = await run_until_disconnect(
                request, cancel, lambda: self.manager.embed(texts, cancel, label, t0, client, model=pooled))
        return vectors, tokens

    def _count_tokens(self, texts: list[str], pooled: str | None = None) -> int:
        try:
            return sum(len(self.manager.tokenize(t, model=pooled)) for t in texts)
        except InvalidRequest:  # a backend that cannot tokenize: honestly unknown
            return 0
