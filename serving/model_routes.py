"""The model pool's HTTP face beside /v1: llama-server router's ``GET /models`` (every servable
model with its ``status`` object), ``POST /models/load`` and ``POST /models/unload`` (``{"model": NAME}``).
Errors leave as OpenAI-style JSON bodies, as on /v1.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from backends.errors import BackendError
from backends.manager import ModelManager
from backends.pool import ERROR, LOADED
from serving.model_names import model_rows
from serving.openai_api import error_response, from_backend_error, internal_error, parse_body


class ModelNameRequest(BaseModel):
    """``{"model": NAME}``: the body of POST /models/load and /models/unload."""

    model_config = ConfigDict(extra="ignore")
    model: str


def add_model_routes(app: FastAPI, manager: ModelManager) -> None:
    """llama-server router's GET /models, POST /models/load, POST /models/unload."""

    @app.get("/models", tags=["llama-server"])
    def models() -> JSONResponse:
        """Every servable model with llama-server's ``status`` object (value: loaded, loading,
        unloaded; a failed load: ``failed`` and its ``error``)."""
        data = []
        for row in model_rows(manager):
            status = row.get("status", LOADED)
            value = {"value": "unloaded" if status == ERROR else status, "args": []}
            if status == ERROR:
                value.update(failed=True, error=row.get("error"))
            data.append({**row, "status": value})
        return JSONResponse({"object": "list", "data": data})

    async def _named(request: Request) -> str | Response:
        body = await parse_body(request, ModelNameRequest)
        if isinstance(body, Response):
            return body
        if manager.pool is None:
            return error_response(400, "This server serves one model: start it with --models-dir to load models by "
                                  "name (or use the Gradio API's /load_model).", "invalid_request_error", "model")
        return body.model

    @app.post("/models/load", tags=["llama-server"])
    async def load(request: Request) -> Response:
        """Load a model by name (waits until it is loaded; already loaded: nothing changes)."""
        name = await _named(request)
        if isinstance(name, Response):
            return name
        try:
            def run() -> None:
                r = manager.pool.acquire(name, autoload=True)
                manager.pool.unpin(r)

            await run_in_threadpool(run)
        except BackendError as exc:
            return from_backend_error(exc)
        except Exception as exc:
            return internal_error(exc)
        return JSONResponse({"success": True})

    @app.post("/models/unload", tags=["llama-server"])
    async def unload(request: Request) -> Response:
        """Unload a model by name now (replies running on it end with an error saying so)."""
        name = await _named(request)
        if isinstance(name, Response):
            return name
        try:
            await run_in_threadpool(manager.pool.unload, name)
        except BackendError as exc:
            return from_backend_error(exc)
        except Exception as exc:
            return internal_error(exc)
        return JSONResponse({"success": True})

