"""OpenAI-compatible /v1 on the same server: /v1/models, /v1/chat/completions, /v1/completions
(stream and not), /v1/embeddings, and llama-server's /tokenize and /detokenize.

This module only translates: an OpenAI body becomes ChatRequests for the shared ChatService (the
same path as the UI and Gradio's /chat: limits, slots, stop strings, timing), and their deltas
become OpenAI chunks. It is the /v1 edge: every error leaves it as an OpenAI-style JSON body with the
right status code.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from backends.errors import BackendError, InvalidRequest
from backends.manager import ModelManager
from serving import model_names
from serving.chat_service import ChatService, clean_text
from serving.disconnect import run_until_disconnect
from serving.openai_choices import ChatChoice, CompletionChoice
from serving.openai_convert import choices_of, to_chat_request, to_completion_requests
from serving.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
    openapi_body,
)
from serving.openai_stream import Choices, GenerationResponse
from serving.request_json import check_body

log = logging.getLogger("quantlab.v1")

MAX_EMBED_INPUTS = 256


def error_response(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # may quote the client's bad text
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)


def from_backend_error(exc: BackendError) -> JSONResponse:
    headers = None
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers = {"Retry-After": str(max(1, int(retry + 0.999)))}
    return error_response(exc.http_status, str(exc), exc.error_type, getattr(exc, "param", None), exc.code, headers)


def internal_error(exc: BaseException) -> JSONResponse:
    log.error("v1 request failed", exc_info=exc)
    return error_response(500, f"Internal error ({type(exc).__name__}).", "server_error")


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    return (f"{loc}: {msg}" if loc else msg), (str(err["loc"][0]) if err.get("loc") else None)


async def parse_body(request: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
    """The body as ``model``, or the OpenAI-style 400 saying what is wrong with it (``check_body``
    first: a lone surrogate or a too-deep nesting anywhere in it)."""
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error_response(400, "The request body is not valid JSON.", "invalid_request_error")
    except RecursionError:
        return error_response(400, "The request body nests JSON too deeply.", "invalid_request_error")
    if not isinstance(raw, dict):
        return error_response(400, "The request body must be a JSON object.", "invalid_request_error")
    try:
        check_body(raw)  # every string valid Unicode, nothing nested too deep: before any field is read
    except InvalidRequest as exc:
        return from_backend_error(exc)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        message, param = _validation_message(exc)
        return error_response(400, message, "invalid_request_error", param)
    except RecursionError:
        return error_response(400, "The request body nests JSON too deeply.", "invalid_request_error")


def _usage(stats: list, prompt_of: Callable[[int], bool]) -> dict:
    """Usage over the choices; the prompt of choices that share one is counted once."""
    prompt = sum(s.prompt_tokens for i, s in enumerate(stats) if prompt_of(i))
    completion = sum(s.completion_tokens for s in stats)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _collect(choices, states) -> Response | None:
    """Feed every choice's deltas to its state (a non-streamed answer); an error as its response."""
    try:
        async for index, d in choices:
            states[index].feed(d)
    except BackendError as exc:
        return from_backend_error(exc)
    except Exception as exc:  # a bug: logged, and still an OpenAI-shaped answer
        return internal_error(exc)
    return None


def _event_stream(events, choices) -> GenerationResponse:
    """A streamed answer that cancels ``choices`` when it ends for any reason."""
    return GenerationResponse(events, choices.cancel, media_type="text/event-stream",
                              headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _in_band_error(exc: BaseException) -> str:
    if isinstance(exc, BackendError):
        return _sse({"error": {"message": str(exc), "type": exc.error_type, "code": exc.code}})
    log.error("v1 stream failed", exc_info=exc)
    return _sse({"error": {"message": f"Internal error ({type(exc).__name__}).", "type": "server_error", "code": None}})


class OpenAIRoutes:
    def __init__(self, manager: ModelManager, chat: ChatService):
        self.manager = manager
        self.chat = chat

    def resolve_model(self, name: str) -> str:
        return model_names.resolve_model(self.manager, name)[0]

    def check_choices(self, count: int, what: str, param: str, pooled: str | None = None) -> None:
        slots = self.manager.slots_of(pooled)
        if count > slots:
            raise InvalidRequest(f"{param}: {what} asks for {count} generations, but this model runs at most {slots} "
                                 "at once (its batch slots: load it with a larger --parallel).", param)

    def models(self) -> dict:
        return {"object": "list", "data": model_names.model_rows(self.manager)}

    @staticmethod
    def client_of(request: Request) -> str | None:
        return getattr(request.state, "client_id", None) or (request.client.host if request.client else None)

    async def _open(self, requests, request: Request, t0: float, pooled: str | None = None) -> Choices:
        client = self.client_of(request)
        if pooled is None:
            streams = self.chat.open_many(requests, endpoint="v1", client=client, t0=t0)
        else:  # a pool model may have to load first: in a worker thread
            streams = await run_in_threadpool(lambda: self.chat.open_many(requests, endpoint="v1", client=client,
                                                                          t0=t0, model=pooled))
        choices = Choices(streams)
        await choices.start()
        return choices

    # --- chat ------------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        t0 = time.perf_counter()
        body = await parse_body(request, ChatCompletionRequest)
        if isinstance(body, Response):
            return body
        try:
            model, pooled = model_names.resolve_model(self.manager, body.model)
            self.check_choices(body.n, "n", "n", pooled)
            chat_request, plan = to_chat_request(body, self.chat.limits)
            choices = await self._open(choices_of(chat_request, body.n), request, t0, pooled)
        except BackendError as exc:
            return from_backend_error(exc)
        except Exception as exc:  # a bug: logged, and still an OpenAI-shaped answer
            return internal_error(exc)
        states = [ChatChoice(i, plan, bool(body.logprobs)) for i in range(body.n)]
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        usage = lambda: _usage([s.stats for s in choices.streams], lambda i: i == 0)  # noqa: E731 - one prompt
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _event_stream(self._chat_sse(choices, states, rid, created, model, include_usage, usage), choices)
        failed = await _collect(choices, states)
        if failed is not None:
            return failed
        return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": model,
                             "choices": [s.message() for s in states], "usage": usage()})

    async def _chat_sse(self, choices, states, rid, created, model, include_usage, usage) -> AsyncIterator[str]:
        def chunk(choice: list[dict], usage_: dict | None = None) -> str:
            body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                                    "choices": choice}
            if usage_ is not None:
                body["usage"] = usage_
            return _sse(body)

        def one(index: int, delta: dict, finish: str | None = None) -> dict:
            lps = delta.pop("_logprobs", None)
            return {"index": index, "delta": delta, "finish_reason": finish,
                    "logprobs": {"content": lps} if lps is not None else None}

        for s in states:
            yield chunk([one(s.index, {"role": "assistant", "content": ""})])
        try:
            async for index, d in choices:
                for delta in states[index].feed(d):
                    yield chunk([one(index, delta)])
                if d.finish_reason and not choices.streams[index].cut:  # a cut stream ends with its error
                    yield chunk([one(index, {}, states[index].finish_reason)])
            if include_usage:
                yield chunk([], usage())
        except Exception as exc:  # after the first token: report in band, as OpenAI does, then a finish reason
            yield _in_band_error(exc)
            yield chunk([one(s.index, {}, "error") for s in states])
        yield "data: [DONE]\n\n"

    # --- text completions ------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        t0 = time.perf_counter()
        body = await parse_body(request, CompletionRequest)
        if isinstance(body, Response):
            return body
        try:
            model, pooled = model_names.resolve_model(self.manager, body.model)
            n_prompts = 1 if isinstance(body.prompt, str) else len(body.prompt)
            what = f"{n_prompts} prompts x n={body.n}" if n_prompts > 1 else "n"
            self.check_choices(n_prompts * body.n, what, "prompt" if n_prompts > 1 else "n", pooled)
            requests = to_completion_requests(body, self.chat.limits)
            choices = await self._open(requests, request, t0, pooled)
        except BackendError as exc:
            return from_backend_error(exc)
        except Exception as exc:
            return internal_error(exc)
        want_lp = body.logprobs is not None
        states = [CompletionChoice(i, want_lp) for i in range(len(requests))]
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        n = body.n
        usage = lambda: _usage([s.stats for s in choices.streams], lambda i: i % n == 0)  # noqa: E731
        base = {"id": rid, "object": "text_completion", "created": created, "model": model}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def sse() -> AsyncIterator[str]:
                try:
                    async for index, d in choices:
                        part = states[index].feed(d)
                        if part is not None:
                            yield _sse({**base, "choices": [part]})
                        if d.finish_reason and not choices.streams[index].cut:  # a cut stream ends with its error
                            end = {"index": index, "text": "", "logprobs": None,
                                   "finish_reason": states[index].completion()["finish_reason"]}
                            yield _sse({**base, "choices": [end]})
                    if include_usage:
                        yield _sse({**base, "choices": [], "usage": usage()})
                except Exception as exc:
                    yield _in_band_error(exc)
                    yield _sse({**base, "choices": [{"index": s.index, "text": "", "logprobs": None,
                                                     "finish_reason": "error"} for s in states]})
                yield "data: [DONE]\n\n"

            return _event_stream(sse(), choices)
        failed = await _collect(choices, states)
        if failed is not None:
            return failed
        return JSONResponse({**base, "choices": [s.completion() for s in states], "usage": usage()})

    # --- embeddings, tokenize --------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        t0 = time.perf_counter()
        body = await parse_body(request, EmbeddingRequest)
        if isinstance(body, Response):
            return body
        try:
            model, pooled = model_names.resolve_model(self.manager, body.model)
            if body.dimensions is not None:
                raise InvalidRequest("dimensions: this server returns the model's own embedding size; leave "
                                     "dimensions unset.", "dimensions")
            texts = body.texts()
            if len(texts) > MAX_EMBED_INPUTS:
                raise InvalidRequest(f"input: at most {MAX_EMBED_INPUTS} texts per request.", "input")
            total = 0
            for i, t in enumerate(texts):
                clean_text(t, "input")
                if not t:
                    raise InvalidRequest(f"input[{i}] is empty.", "input")
                total += len(t)
            if total > self.chat.limits.max_prompt_chars:
                raise InvalidRequest(f"input is {total:,} characters long; this server accepts at most "
                                     f"{self.chat.limits.max_prompt_chars:,} (--max-prompt-chars).", "input")
            tokens = await run_in_threadpool(self._count_tokens, texts, pooled)
            budget = self.chat.limits.max_embed_tokens
            if tokens > budget:
                raise InvalidRequest(f"input is {tokens:,} tokens long; this server embeds at most {budget:,} tokens "
                                     "per request (--max-embed-tokens): split it into smaller requests.", "input")
            client = self.client_of(request)
            cancel = threading.Event()
            with self.chat.limiter.slot(client):
                vectors = await run_until_disconnect(
                    request, cancel, lambda: self.manager.embed(texts, cancel, "embeddings", t0, client, model=pooled))
        except BackendError as exc:
            return from_backend_error(exc)
        except Exception as exc:
            return internal_error(exc)
        data = []
        for i, v in enumerate(vectors):
            emb: Any = ([float(x) for x in v] if body.encoding_format == "float"
                        else base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii"))
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return JSONResponse({"object": "list", "data": data, "model": model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _count_tokens(self, texts: list[str], pooled: str | None = None) -> int:
        try:
            return sum(len(self.manager.tokenize(t, model=pooled)) for t in texts)
        except InvalidRequest:  # a backend that cannot tokenize: honestly unknown
            return 0

    async def tokenize(self, request: Request) -> Response:
        body = await parse_body(request, TokenizeRequest)
        if isinstance(body, Response):
            return body
        try:
            self.resolve_model("")
            text = clean_text(body.content, "content")
            if len(text) > self.chat.limits.max_prompt_chars:
                raise InvalidRequest(f"content is {len(text):,} characters long; this server accepts at most "
                                     f"{self.chat.limits.max_prompt_chars:,} (--max-prompt-chars).", "content")
            tokens = await run_in_threadpool(self._tokens, text, body.add_special)
            if not body.with_pieces:
                return JSONResponse({"tokens": tokens})
            pieces = await run_in_threadpool(lambda: [self.manager.detokenize([t]) for t in tokens])
        except BackendError as exc:
            return from_backend_error(exc)
        except Exception as exc:
            return internal_error(exc)
        return JSONResponse({"tokens": [{"id": t, "piece": p} for t, p in zip(tokens, pieces)]})

    def _tokens(self, text: str, add_special: bool) -> list[int]:
        """``text``'s tokens; without ``add_special`` the BOS the model adds is left out (the tokens
        of an empty text are exactly what the model adds in front)."""
        tokens = self.manager.tokenize(text)
        if not add_special:
            special = self.manager.tokenize("")
            if special and tokens[: len(special)] == special:
                tokens = tokens[len(special):]
        return tokens

    async def detokenize(self, request: Request) -> Response:
        body = await parse_body(request, DetokenizeRequest)
        if isinstance(body, Response):
            return body
        try:
            self.resolve_model("")
            if any(t < 0 for t in body.tokens):
                raise InvalidRequest("tokens: token ids are not negative.", "tokens")
            limit = self.chat.limits.max_prompt_chars  # a token is at least a character: /tokenize's output fits
            if len(body.tokens) > limit:
                raise InvalidRequest(f"tokens: {len(body.tokens):,} tokens; this server detokenizes at most {limit:,} "
                                     "per request (--max-prompt-chars).", "tokens")
            text = await run_in_threadpool(self.manager.detokenize, body.tokens)
        except BackendError as exc:
            return from_backend_error(exc)
        except Exception as exc:
            return internal_error(exc)
        return JSONResponse({"content": text})


ROUTES = {"models": "GET", "chat/completions": "POST", "completions": "POST", "embeddings": "POST"}


def add_openai_routes(app: FastAPI, manager: ModelManager, chat: ChatService) -> OpenAIRoutes:
    routes = OpenAIRoutes(manager, chat)
    bodies = {"chat/completions": ChatCompletionRequest, "completions": CompletionRequest,
              "embeddings": EmbeddingRequest, "tokenize": TokenizeRequest, "detokenize": DetokenizeRequest}
    handlers = {"models": routes.models, "chat/completions": routes.chat_completions,
                "completions": routes.completions, "embeddings": routes.embeddings}
    router = APIRouter(prefix="/v1", tags=["openai"])
    for name, handler in handlers.items():
        extra = {"openapi_extra": openapi_body(bodies[name])} if name in bodies else {}
        router.add_api_route(f"/{name}", handler, methods=[ROUTES[name]], **extra)
        # a trailing slash (as some clients write base URLs) reaches the same handler
        router.add_api_route(f"/{name}/", handler, methods=[ROUTES[name]], include_in_schema=False)
    app.include_router(router)
    for name, handler in (("tokenize", routes.tokenize), ("detokenize", routes.detokenize)):
        app.add_api_route(f"/{name}", handler, methods=["POST"], tags=["llama-server"],
                          openapi_extra=openapi_body(bodies[name]))
        app.add_api_route(f"/{name}/", handler, methods=["POST"], include_in_schema=False)

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    def unknown(rest: str, request: Request) -> JSONResponse:
        if rest.strip("/") in ROUTES:
            method = ROUTES[rest.strip("/")]
            return error_response(405, f"{request.method} is not allowed on /v1/{rest.strip('/')}: use {method}.",
                                  "invalid_request_error", code="method_not_allowed", headers={"Allow": method})
        return error_response(404, f"Unknown endpoint /v1/{rest}.", "invalid_request_error", code="unknown_url")

    return routes
