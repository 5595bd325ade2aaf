"""Anthropic's Messages API on the shared pipeline: POST /v1/messages (a ``message`` body, or
Anthropic's server-sent events when ``stream`` is true) and POST /v1/messages/count_tokens.

``Messages`` is the ``Endpoint``: its schema, the conversion (``convert.py``) and the reply
(``reply.py``); the pipeline does the rest (parsing, the model check, the ChatService's limits,
slots and rate limits, metrics under the endpoint label ``messages``, in-band errors, cancelling
when the client leaves). Every failure is answered in Anthropic's error shape (``errors.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from backends.base import ChatRequest
from backends.manager import ModelManager
from serving.anthropic.convert import ToolPlan, to_chat_request
from serving.anthropic.errors import ANTHROPIC_ERRORS, error_response
from serving.anthropic.reply import MessageReply
from serving.anthropic.schema import CountTokensRequest, MessagesRequest
from serving.api.pipeline import Endpoint, Pipeline
from serving.api.stream import EventFormat
from serving.chat_service import ChatService, ChatStream


def sse_event(event: dict) -> str:
    """One server-sent event named by its type, as Anthropic writes them."""
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


ANTHROPIC_SSE = EventFormat("text/event-stream", sse_event)


class Messages(Endpoint):
    schema = MessagesRequest
    errors = ANTHROPIC_ERRORS
    format = ANTHROPIC_SSE
    label = "messages"


    @staticmethod
    def convert(body: MessagesRequest, pipe: Pipeline) -> tuple[list[ChatRequest], ToolPlan]:
        request, plan = to_chat_request(body, pipe.chat.limits)
        return [request], plan

    @staticmethod
    def reply(body: MessagesRequest, plan: ToolPlan, model: str, streams: Sequence[ChatStream]) -> MessageReply:
        return MessageReply(plan, model, streams)


class AnthropicRoutes:
    def __init__(self, pipe: Pipeline):
        self.pipe = pipe

    async def messages(self, request: Request) -> Response:
        return await self.pipe.generate(Messages(), request)

    async def count_tokens(self, request: Request) -> Response:
        return await self.pipe.answer(request, CountTokensRequest, self._count_tokens, ANTHROPIC_ERRORS)

    async def _count_tokens(self, body: CountTokensRequest, request: Request, t0: float) -> dict:
        """The prompt's tokens as the model would see it: the chat template applied, tools included."""
        self.pipe.resolve_model(body.model)
        chat_request, _ = to_chat_request(body, self.pipe.chat.limits)
        return {"input_tokens": await run_in_threadpool(self.pipe.manager.count_prompt_tokens, chat_request)}


ROUTES = ("/v1/messages", "/v1/messages/count_tokens")


def add_anthropic_routes(app: FastAPI, manager: ModelManager, chat: ChatService) -> AnthropicRoutes:
    """The routes, added before the /v1 catch-all of the OpenAI routes so they win over it; any
    other method on them is a 405, any other path under /v1/messages a 404, in Anthropic's shape."""
    routes = AnthropicRoutes(Pipeline(manager, chat))
    for path, handler in zip(ROUTES, (routes.messages, routes.count_tokens)):
        app.add_api_route(path, handler, methods=["POST"], tags=["anthropic"])
        app.add_api_route(path + "/", handler, methods=["POST"], include_in_schema=False)

    def wrong_method(request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/")
        return error_response(405, f"{request.method} is not allowed on {path}: use POST.", {"Allow": "POST"})

    for path in ROUTES:
        app.add_api_route(path, wrong_method, methods=["GET", "PUT", "DELETE", "PATCH"], include_in_schema=False)

    @app.api_route("/v1/messages/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                   include_in_schema=False)
    def unknown(rest: str) -> JSONResponse:
        return error_response(404, f"Unknown endpoint /v1/messages/{rest}.")

    return routes
