"""The model pool's HTTP face beside /v1: llama-server router's ``GET /models`` (every servable
model with its ``status`` object), ``POST /models/load`` and ``POST /models/unload`` (``{"model": NAME}``).
They run on the /v1 pipeline's ``answer`` (one body parser, one error mapper: OpenAI-style JSON errors).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from backends.errors import InvalidRequest
from backends.pool import ERROR, LOADED
from serving.api.pipeline import Pipeline
from serving.model_names import model_rows
from serving.openai.errors import OPENAI_ERRORS


class ModelNameRequest(BaseModel):
    """``{"model": NAME}``: the body of POST /models/load and /models/unload."""

    model_config = ConfigDict(extra="ignore")
    model: str


def add_model_routes(app: FastAPI, pipe: Pipeline) -> None:
    """llama-server router's GET /models, POST /models/load, POST /models/unload."""
    manager = pipe.manager

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

    def pool_name(body: ModelNameRequest) -> str:
        if manager.pool is None:
            raise InvalidRequest("This server serves one model: start it with --models-dir to load models by "
                                 "name (or use the Gradio API's /load_model).", "model")
        return body.model

    async def do_load(body: ModelNameRequest, request: Request, t0: float) -> dict:
        name = pool_name(body)

        def run() -> None:
            r = manager.pool.acquire(name, autoload=True)
            manager.pool.unpin(r)

        await run_in_threadpool(run)
        return {"success": True}

    async def do_unload(body: ModelNameRequest, request: Request, t0: float) -> dict:
        await run_in_threadpool(manager.pool.unload, pool_name(body))
        return {"success": True}

    @app.post("/models/load", tags=["llama-server"])
    async def load(request: Request) -> Response:
        """Load a model by name (waits until it is loaded; already loaded: nothing changes)."""
        return await pipe.answer(request, ModelNameRequest, do_load, OPENAI_ERRORS)

    @app.post("/models/unload", tags=["llama-server"])
    async def unload(request: Request) -> Response:
        """Unload a model by name now (replies running on it end with an error saying so)."""
        return await pipe.answer(request, ModelNameRequest, do_unload, OPENAI_ERRORS)
