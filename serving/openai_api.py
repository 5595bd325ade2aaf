"""OpenAI-compatible /v1 on the same server: /v1/models and /v1/chat/completions (stream and not).

This module only translates: an OpenAI body becomes a ChatRequest for the shared ChatService (the
same path as the UI and Gradio's /chat: limits, slots, stop strings, timing), and its deltas become
OpenAI chunks. It is the /v1 edge: every error leaves it as an OpenAI-style JSON body with the right
status code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from backends.base import ChatRequest, Message, SamplingParams
from backends.errors import BackendError, InvalidRequest, ModelNotFound, NoModelLoaded
from backends.manager import ModelManager
from serving.chat_service import ChatService, RequestLimits, chat_request
from serving.openai_schema import ChatCompletionRequest, openapi_body

log = logging.getLogger("quantlab.v1")

DEFAULT_MAX_TOKENS = 1024
_END = object()


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


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    return (f"{loc}: {msg}" if loc else msg), (str(err["loc"][0]) if err.get("loc") else None)


def to_chat_request(body: ChatCompletionRequest, limits: RequestLimits | None = None) -> ChatRequest:
    refused = body.unsupported()
    if refused is not None:
        field, why = refused
        raise InvalidRequest(f"{field}: {why}.", field)
    try:
        messages = tuple(Message("system" if m.role == "developer" else m.role, m.text()) for m in body.messages)
    except ValueError as exc:
        raise InvalidRequest(str(exc), "messages") from exc
    if messages[-1].role == "assistant":
        raise InvalidRequest("The last message must not be from the assistant (prefill is not supported).", "messages")
    params = SamplingParams(
        max_new_tokens=body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=0 if body.top_k is None else body.top_k,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        seed=body.seed,
    )
    return chat_request(messages, params, body.stop_list(), limits)  # the same checks as every entry point


class OpenAIRoutes:
    def __init__(self, manager: ModelManager, chat: ChatService):
        self.manager = manager
        self.chat = chat

    def resolve_model(self, name: str) -> str:
        cur = self.manager.current
        if cur is None:
            raise NoModelLoaded("No model is loaded on this server.")
        if name not in (cur.name, "default", ""):
            raise ModelNotFound(f"The model '{name}' does not exist on this server; it serves '{cur.name}'.")
        return cur.name

    def models(self) -> dict:
        cur = self.manager.current
        data = []
        if cur is not None:
            data.append({"id": cur.name, "object": "model", "created": int(time.time() - cur.load_seconds),
                         "owned_by": "quantlab", "quantization": cur.quantization, "backend": cur.backend,
                         "context_length": cur.context_length})
        return {"object": "list", "data": data}

    async def chat_completions(self, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            raw = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(400, "The request body is not valid JSON.", "invalid_request_error")
        except RecursionError:
            return error_response(400, "The request body nests JSON too deeply.", "invalid_request_error")
        if not isinstance(raw, dict):
            return error_response(400, "The request body must be a JSON object with model and messages.",
                                  "invalid_request_error")
        try:
            body = ChatCompletionRequest.model_validate(raw)
        except ValidationError as exc:
            message, param = _validation_message(exc)
            return error_response(400, message, "invalid_request_error", param)
        except RecursionError:
            return error_response(400, "The request body nests JSON too deeply.", "invalid_request_error")
        client = getattr(request.state, "client_id", None) or (request.client.host if request.client else None)
        try:
            model = self.resolve_model(body.model)
            stream = self.chat.open(to_chat_request(body, self.chat.limits), endpoint="v1", client=client, t0=t0)
        except BackendError as exc:
            return from_backend_error(exc)
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def produce() -> None:
            try:
                for delta in stream:
                    loop.call_soon_threadsafe(queue.put_nowait, delta)
            except BaseException as exc:  # delivered to the consumer, never lost
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                stream.close()  # frees the model slot and the client's rate-limit slot
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        threading.Thread(target=produce, name="v1-generate", daemon=True).start()
        first = await queue.get()
        if isinstance(first, BaseException):
            await queue.get()  # _END
            if isinstance(first, BackendError):
                return from_backend_error(first)
            log.error("v1 generation failed", exc_info=first)
            return error_response(500, f"Internal error ({type(first).__name__}).", "server_error")

        async def deltas() -> AsyncIterator:
            item = first
            try:
                while item is not _END:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    item = await queue.get()
            finally:
                stream.cancel.set()  # client gone or done: the producer stops within one token

        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return GenerationResponse(self._sse(deltas(), rid, created, model, include_usage, stream), stream.cancel,
                                      media_type="text/event-stream",
                                      headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, finish = [], None
        try:
            async for d in deltas():
                text.append(d.text)
                finish = d.finish_reason or finish
        except BackendError as exc:
            return from_backend_error(exc)
        except Exception as exc:  # a bug: logged, and still an OpenAI-shaped answer
            log.error("v1 generation failed", exc_info=exc)
            return error_response(500, f"Internal error ({type(exc).__name__}).", "server_error")
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                         "finish_reason": _finish(finish), "logprobs": None}],
            "usage": _usage(stream.stats),
        })

    async def _sse(self, deltas, rid, created, model, include_usage, stream):
        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if delta is not None else []}
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        finish = None
        try:
            async for d in deltas:
                if d.text:
                    yield chunk({"content": d.text})
                finish = d.finish_reason or finish
            yield chunk({}, _finish(finish))
            if include_usage:
                yield chunk(None, usage=_usage(stream.stats))
        except BackendError as exc:  # after the first token: report in-band, as OpenAI does, then a finish reason
            yield f"data: {json.dumps({'error': {'message': str(exc), 'type': exc.error_type, 'code': exc.code}})}\n\n"
            yield chunk({}, "error")
        except Exception as exc:  # a bug: logged, and still reported in band
            log.error("v1 stream failed", exc_info=exc)
            yield f"data: {json.dumps({'error': {'message': f'Internal error ({type(exc).__name__}).', 'type': 'server_error', 'code': None}})}\n\n"
            yield chunk({}, "error")
        yield "data: [DONE]\n\n"


class GenerationResponse(StreamingResponse):
    """A streamed reply that cancels its generation when the response ends for any reason: a
    client that disconnects stops the model within a token, without waiting for the garbage
    collector to close the abandoned async generators."""

    def __init__(self, content, cancel: threading.Event, **kwargs):
        super().__init__(content, **kwargs)
        self._cancel = cancel

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cancel.set()


def _finish(reason: str | None) -> str:
    return {"length": "length", "cancelled": "stop", None: "stop"}.get(reason, "stop")


def _usage(stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens}


def add_openai_routes(app: FastAPI, manager: ModelManager, chat: ChatService) -> OpenAIRoutes:
    routes = OpenAIRoutes(manager, chat)
    router = APIRouter(prefix="/v1", tags=["openai"])
    router.add_api_route("/models", routes.models, methods=["GET"])
    router.add_api_route("/chat/completions", routes.chat_completions, methods=["POST"],
                         openapi_extra=openapi_body(ChatCompletionRequest))
    app.include_router(router)

    allowed = {"models": "GET", "chat/completions": "POST"}

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    def unknown(rest: str, request: Request) -> JSONResponse:
        if rest.strip("/") in allowed:
            method = allowed[rest.strip("/")]
            return error_response(405, f"{request.method} is not allowed on /v1/{rest.strip('/')}: use {method}.",
                                  "invalid_request_error", code="method_not_allowed", headers={"Allow": method})
        return error_response(404, f"Unknown endpoint /v1/{rest}.", "invalid_request_error", code="unknown_url")

    return routes
