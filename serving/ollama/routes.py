"""Ollama's API on the shared pipeline, at /api: chat and generate (NDJSON streamed by default, one
body with ``stream: false``), tags, ps, show, version, embed and the older embeddings.

``OLLAMA_CHAT`` and ``OLLAMA_GENERATE`` are the ``Endpoint``s: schema, conversion (``convert.py``),
reply (``reply.py``); the pipeline does the rest (parsing, the model check, the ChatService's limits,
slots and rate limits, metrics under the endpoint labels ``api/chat`` and ``api/generate``, in-band
errors, cancelling when the client leaves). The listing routes describe the one loaded model under
the name Ollama's clients expect (``NAME:latest``); a request may name it with or without a tag.
Every failure under /api, an unknown path included, is answered in Ollama's shape (``errors.py``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from backends.base import ChatRequest, LoadedModel
from backends.errors import InvalidRequest, NoModelLoaded
from backends.manager import ModelManager
from serving.api.pipeline import Endpoint, Pipeline
from serving.api.stream import NDJSON
from serving.chat_service import ChatService, ChatStream
from serving.ollama.convert import chat_to_request, generate_to_request, keep_alive_s
from serving.ollama.errors import OLLAMA_ERRORS, error_response
from serving.ollama.reply import ChatReply, GenerateReply, now
from serving.ollama.schema import ChatBody, EmbedBody, EmbeddingsBody, GenerateBody, ShowBody

VERSION = "0.12.0"  # the Ollama API version whose shapes these routes follow
TAG = "latest"


def untagged(name: str) -> str:
    """``name`` without an Ollama ``:tag`` (``model:latest`` names ``model``)."""
    base, sep, _ = name.rpartition(":")
    return base if sep and base else name


def tagged(name: str) -> str:
    return name if ":" in name else f"{name}:{TAG}"


def keep_alive(pipe: Pipeline, pooled: str | None, value: Any) -> float | None:
    """Apply a request's ``keep_alive`` to the pool model it names (the chat's model stays loaded until
    /unload_model: keep_alive does not apply to it). Returns it in seconds (None: not given)."""
    seconds = keep_alive_s(value)
    if seconds is not None and pooled is not None:
        pipe.manager.pool.keep_alive(pooled, seconds)
    return seconds


class OllamaEndpoint(Endpoint):
    """/api/chat or /api/generate: its body, its conversion to one ChatRequest (``convert.py``) and its
    reply (``reply.py``); a model named with or without a tag."""

    errors = OLLAMA_ERRORS
    format = NDJSON

    def __init__(self, schema: type, label: str, to_request: Callable, reply: Callable):
        self.schema, self.label, self._to_request, self._reply = schema, label, to_request, reply

    @staticmethod
    def model(body: Any) -> str:
        return untagged(body.model)

    def convert(self, body: Any, pipe: Pipeline) -> tuple[list[ChatRequest], None]:
        requests = [self._to_request(body, pipe.manager.context_length(), pipe.chat.limits)]
        keep_alive(pipe, pipe.pooled, body.keep_alive)
        return requests, None

    def reply(self, body: Any, plan: None, model: str, streams: Sequence[ChatStream]) -> ChatReply | GenerateReply:
        return self._reply(body.model, streams)


OLLAMA_CHAT = OllamaEndpoint(ChatBody, "api/chat", chat_to_request, ChatReply)
OLLAMA_GENERATE = OllamaEndpoint(GenerateBody, "api/generate", generate_to_request, GenerateReply)


def details(cur: LoadedModel) -> dict:
    return {"parent_model": "", "format": "gguf" if cur.backend == "llamacpp" else cur.backend, "family": "",
            "families": None, "parameter_size": "", "quantization_level": cur.quantization}


def described(cur: LoadedModel) -> dict:
    """The loaded model as a /api/tags entry."""
    name = tagged(cur.name)
    return {"name": name, "model": name,
            "modified_at": datetime.fromtimestamp(time.time() - cur.load_seconds, timezone.utc).isoformat(),
            "size": cur.footprint_bytes, "digest": hashlib.sha256(f"{cur.name}\0{cur.source}".encode()).hexdigest(),
            "details": details(cur)}


def unloaded(row: dict) -> dict:
    """A pool model not loaded now, as a /api/tags entry (its size and date are its file's)."""
    name = tagged(row["name"])
    return {"name": name, "model": name, "modified_at": datetime.now(timezone.utc).isoformat(), "size": 0,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {"parent_model": "", "format": "gguf" if row["backend"] == "llamacpp" else row["backend"],
                        "family": "", "families": None, "parameter_size": "", "quantization_level": ""}}


class OllamaRoutes:
    def __init__(self, pipe: Pipeline):
        self.pipe = pipe
        self.manager = pipe.manager

    async def chat(self, request: Request) -> Response:
        if await self._loads_only(request, "messages"):
            return await self.pipe.answer(request, ChatBody, self._loaded, OLLAMA_ERRORS)
        return await self.pipe.generate(OLLAMA_CHAT, request)

    async def generate(self, request: Request) -> Response:
        if await self._loads_only(request, "prompt"):
            return await self.pipe.answer(request, GenerateBody, self._loaded, OLLAMA_ERRORS)
        return await self.pipe.generate(OLLAMA_GENERATE, request)

    @staticmethod
    async def _loads_only(request: Request, field: str) -> bool:
        """Ollama's "load the model" request: a chat without messages, a generate without a prompt."""
        try:
            raw = await request.json()  # kept by the request: the pipeline reads it again
        except Exception:  # not JSON: the pipeline says so in Ollama's shape
            return False
        return isinstance(raw, dict) and not raw.get(field) and not raw.get("images")

    async def _loaded(self, body: ChatBody | GenerateBody, request: Request, t0: float) -> dict:
        """Ollama's load request: a pool model is loaded (it stays loaded for its ``keep_alive``), or
        with ``keep_alive: 0`` unloaded (done_reason "unload"); the chat's model is loaded already."""
        _, pooled = self.pipe.resolve_model(untagged(body.model))
        seconds = keep_alive(self.pipe, pooled, body.keep_alive)
        reason = "load"
        if pooled is not None and seconds == 0:
            reason = "unload"
            if pooled in {r["name"] for r in self._listing() if r["status"] == "loaded" and not r["chat_model"]}:
                await run_in_threadpool(self.manager.pool.unload, pooled)
        elif pooled is not None:
            await run_in_threadpool(lambda: self.manager.borrow(pooled).close())
        said = {"message": {"role": "assistant", "content": ""}} if isinstance(body, ChatBody) else {"response": ""}
        return {"model": body.model, "created_at": now(), **said, "done": True, "done_reason": reason}

    def _resident(self, listing: list[dict]) -> list[LoadedModel]:
        """The models loaded now: the chat's, then the pool's (``listing``: the pool's rows, or [])."""
        cur = self.manager.current
        return ([cur] if cur is not None else []) + [r["info"] for r in listing
                                                     if r["info"] is not None and not r["chat_model"]]

    def _listing(self) -> list[dict]:
        return self.manager.pool.listing() if self.manager.pool is not None else []

    def tags(self) -> dict:
        """Every model a request may name: the loaded ones, and with --models-dir the pool's others too
        (loaded on the request that names them)."""
        listing = self._listing()
        listed = [described(m) for m in self._resident(listing)]
        seen = {m["name"] for m in listed}
        return {"models": listed + [unloaded(r) for r in listing
                                    if r["info"] is None and tagged(r["name"]) not in seen]}

    def ps(self) -> dict:
        return {"models": [{**described(m), "expires_at": "0001-01-01T00:00:00Z",
                            "size_vram": m.footprint_bytes if m.device.startswith("cuda") else 0,
                            "context_length": m.context_length} for m in self._resident(self._listing())]}

    @staticmethod
    def version() -> dict:
        return {"version": VERSION}

    async def show(self, request: Request) -> Response:
        return await self.pipe.answer(request, ShowBody, self._show, OLLAMA_ERRORS)

    async def _show(self, body: ShowBody, request: Request, t0: float) -> dict:
        if not body.named():
            raise InvalidRequest("model: name the model to show.", "model")
        self.pipe.resolve_model(untagged(body.named()))
        cur = self.manager.current
        if cur is None:
            raise NoModelLoaded("No model is loaded on this server.")
        return {"modelfile": "", "parameters": "", "template": "", "details": details(cur),
                "model_info": {"general.name": cur.name, "general.quantization": cur.quantization,
                               "general.context_length": cur.context_length},
                "capabilities": [*cur.capabilities, "tools"], "modified_at": described(cur)["modified_at"]}

    async def embed(self, request: Request) -> Response:
        return await self.pipe.answer(request, EmbedBody, self._embed, OLLAMA_ERRORS)

    async def _embed(self, body: EmbedBody, request: Request, t0: float) -> dict:
        _, pooled = self.pipe.resolve_model(untagged(body.model))
        keep_alive(self.pipe, pooled, body.keep_alive)
        if body.dimensions is not None:
            raise InvalidRequest("dimensions: this server returns the model's own embedding size; leave "
                                 "dimensions unset.", "dimensions")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise InvalidRequest("input: give a text or a non-empty list of them.", "input")
        vectors, tokens = await self.pipe.embed(texts, request, t0, pooled, label="api/embed")
        return {"model": body.model, "embeddings": [[float(x) for x in v] for v in vectors],
                "total_duration": int((time.perf_counter() - t0) * 1e9), "load_duration": 0,
                "prompt_eval_count": tokens}

    async def embeddings(self, request: Request) -> Response:
        return await self.pipe.answer(request, EmbeddingsBody, self._embeddings, OLLAMA_ERRORS)

    async def _embeddings(self, body: EmbeddingsBody, request: Request, t0: float) -> dict:
        _, pooled = self.pipe.resolve_model(untagged(body.model))
        vectors, _ = await self.pipe.embed([body.prompt], request, t0, pooled, label="api/embeddings")
        return {"embedding": [float(x) for x in vectors[0]]}


ROUTES = {"chat": "POST", "generate": "POST", "tags": "GET", "ps": "GET", "show": "POST", "version": "GET",
          "embed": "POST", "embeddings": "POST"}
MANAGEMENT = ("pull", "push", "create", "delete", "copy", "blobs")  # this server does not manage models so


def add_ollama_routes(app: FastAPI, manager: ModelManager, chat: ChatService) -> OllamaRoutes:
    routes = OllamaRoutes(Pipeline(manager, chat))
    for name, method in ROUTES.items():
        handler = getattr(routes, name)
        app.add_api_route(f"/api/{name}", handler, methods=[method], tags=["ollama"])
        app.add_api_route(f"/api/{name}/", handler, methods=[method], include_in_schema=False)

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"],
                   include_in_schema=False)
    def unknown(rest: str, request: Request) -> JSONResponse:
        name = rest.strip("/")
        if name in ROUTES:
            method = ROUTES[name]
            return error_response(405, f"{request.method} is not allowed on /api/{name}: use {method}.",
                                  {"Allow": method})
        if name.split("/")[0] in MANAGEMENT:
            return error_response(501, f"/api/{name} is not supported: this server serves the model it has loaded "
                                  "and does not pull, push, create, copy or delete models.")
        return error_response(404, f"Unknown endpoint /api/{rest}.")

    return routes
