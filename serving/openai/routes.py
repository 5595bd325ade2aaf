"""OpenAI-compatible /v1 on the same server: /v1/models, /v1/chat/completions, /v1/completions,
/v1/responses (stream and not), /v1/embeddings, and llama-server's /tokenize and /detokenize.

Only the wiring and the small bodies live here. Chat and text completions and Responses are
``Endpoint``s (``completions.py``, ``responses.py``) that the pipeline (``serving/api/pipeline.py``: parse
-> convert -> open -> respond) runs on the shared ChatService, the same path as the UI and Gradio's
/chat; the other routes run their work under the pipeline's ``answer``. Every error leaves through
the one mapper (``serving/api/errors.py``) as an OpenAI-style JSON body with the right status code.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from backends.errors import InvalidRequest
from backends.manager import ModelManager
from monitoring import stats as monitor_stats
from serving import model_names
from serving.api.errors import api_error
from serving.api.pipeline import Pipeline
from serving.chat_service import ChatService
from serving.openai.completions import ChatCompletions, Completions
from serving.openai.errors import OPENAI_ERRORS, error_response
from serving.openai.model_routes import add_model_routes
from serving.openai.not_found import NotFoundMiddleware
from serving.openai.response_store import ResponseStore
from serving.openai.responses import Responses
from serving.openai.responses_schema import ResponsesRequest
from serving.openai.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
    openapi_body,
)
from serving.ops import file_names_only
from serving.requests import as_int, check_chars, clean_text


class OpenAIRoutes:
    """The /v1 handlers: the generating ones run their ``Endpoint`` on the pipeline; embeddings,
    models and llama-server's tokenize / detokenize build their small bodies here."""

    def __init__(self, pipe: Pipeline):
        self.pipe = pipe
        self.kept = ResponseStore()  # /v1/responses kept for previous_response_id
        self.manager = pipe.manager
        self.chat = pipe.chat

    def models(self) -> dict:
        return {"object": "list", "data": model_names.model_rows(self.manager)}

    async def chat_completions(self, request: Request) -> Response:
        return await self.pipe.generate(ChatCompletions(), request)

    async def completions(self, request: Request) -> Response:
        return await self.pipe.generate(Completions(), request)

    async def responses(self, request: Request) -> Response:
        return await self.pipe.generate(Responses(self.kept), request)

    # --- embeddings, tokenize --------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        return await self.pipe.answer(request, EmbeddingRequest, self._embeddings, OPENAI_ERRORS)

    async def _embeddings(self, body: EmbeddingRequest, request: Request, t0: float) -> dict:
        model, pooled = self.pipe.resolve_model(body.model)
        if body.dimensions is not None:
            raise InvalidRequest("dimensions: this server returns the model's own embedding size; leave "
                                 "dimensions unset.", "dimensions")
        vectors, tokens = await self.pipe.embed(body.texts(), request, t0, pooled)
        data = []
        for i, v in enumerate(vectors):
            emb: Any = ([float(x) for x in v] if body.encoding_format == "float"
                        else base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii"))
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def tokenize(self, request: Request) -> Response:
        return await self.pipe.answer(request, TokenizeRequest, self._tokenize, OPENAI_ERRORS)

    async def _tokenize(self, body: TokenizeRequest, request: Request, t0: float) -> dict:
        self.pipe.resolve_model("")
        text = clean_text(body.content, "content")
        check_chars(len(text), "content", "content", self.chat.limits)
        tokens = await run_in_threadpool(self._tokens, text, body.add_special)
        if not body.with_pieces:
            return {"tokens": tokens}
        pieces = await run_in_threadpool(lambda: [self.manager.detokenize([t]) for t in tokens])
        return {"tokens": [{"id": t, "piece": p} for t, p in zip(tokens, pieces)]}

    def _tokens(self, text: str, add_special: bool) -> list[int]:
        """``text``'s tokens; without ``add_special`` the BOS the model adds is left out (the tokens
        of an empty text are exactly what the model adds in front)."""
        tokens = self.manager.tokenize(text)
        if not add_special:
            special = self.manager.tokenize("")
            if special and tokens[: len(special)] == special:
                tokens = tokens[len(special):]
        return tokens

    async def stats(self, request: Request, last: str = "50") -> Response:
        """GET /stats: the Gradio API's /stats over plain HTTP (memory: process, system, GPUs, each model
        held; the latency of the ``last`` 1-1000 requests), behind the same credentials as /v1."""
        try:
            n = as_int(last, "last")
            if not 1 <= n <= 1000:
                raise InvalidRequest(f"last must be between 1 and 1000, got {n}.", "last")
            body = monitor_stats.stats(self.manager, request.app.state.monitor, n)
            settings = request.app.state.settings
            exposed = getattr(settings, "exposed", False) and not (settings.auth or settings.api_key)
            return JSONResponse(file_names_only(body) if exposed else body)
        except Exception as exc:  # a bad `last`, or a bug: an OpenAI-shaped answer either way
            return OPENAI_ERRORS.response(api_error(exc))

    async def detokenize(self, request: Request) -> Response:
        return await self.pipe.answer(request, DetokenizeRequest, self._detokenize, OPENAI_ERRORS)

    async def _detokenize(self, body: DetokenizeRequest, request: Request, t0: float) -> dict:
        self.pipe.resolve_model("")
        if any(t < 0 for t in body.tokens):
            raise InvalidRequest("tokens: token ids are not negative.", "tokens")
        limit = self.chat.limits.max_prompt_chars  # a token is at least a character: /tokenize's output fits
        if len(body.tokens) > limit:
            raise InvalidRequest(f"tokens: {len(body.tokens):,} tokens; this server detokenizes at most {limit:,} "
                                 "per request (--max-prompt-chars).", "tokens")
        return {"content": await run_in_threadpool(self.manager.detokenize, body.tokens)}

ROUTES = {"models": "GET", "chat/completions": "POST", "completions": "POST", "responses": "POST",
          "embeddings": "POST"}


def add_openai_routes(app: FastAPI, manager: ModelManager, chat: ChatService) -> OpenAIRoutes:
    routes = OpenAIRoutes(Pipeline(manager, chat))
    app.add_middleware(NotFoundMiddleware)  # any other unknown path: an OpenAI-shaped 404
    add_model_routes(app, routes.pipe)
    bodies = {"chat/completions": ChatCompletionRequest, "completions": CompletionRequest,
              "responses": ResponsesRequest,
              "embeddings": EmbeddingRequest, "tokenize": TokenizeRequest, "detokenize": DetokenizeRequest}
    handlers = {"models": routes.models, "chat/completions": routes.chat_completions,
                "completions": routes.completions, "responses": routes.responses, "embeddings": routes.embeddings}
    router = APIRouter(prefix="/v1", tags=["openai"])
    for name, handler in handlers.items():
        extra = {"openapi_extra": openapi_body(bodies[name])} if name in bodies else {}
        router.add_api_route(f"/{name}", handler, methods=[ROUTES[name]], **extra)
        # a trailing slash (as some clients write base URLs) reaches the same handler
        router.add_api_route(f"/{name}/", handler, methods=[ROUTES[name]], include_in_schema=False)
    app.include_router(router)
    app.add_api_route("/stats", routes.stats, methods=["GET"], tags=["ops"])
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
