"""Operations endpoints: GET /health (readiness), GET /live (liveness), GET /metrics (Prometheus).

/health: 200 with the serving model while one is ready, 503 (JSON) while loading or empty. With
--auth or --api-key, callers without credentials get the status alone (no paths, no last error).
With no credentials configured on an exposed address (--listen), every caller is one of those
anonymous callers: they get the whole body, but with each absolute path cut to its file name (the
server's folder layout and user names are nobody's business). On 127.0.0.1 the body is whole.
While a new model loads beside a serving one, the app is still ready (it keeps answering with the
old model) and the body says what is loading.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from backends.manager import ModelManager
from monitoring.prometheus import PrometheusExporter
from monitoring.stats import memory_account, one_memory
from serving.auth import AccessPolicy

# An absolute path inside a text: POSIX (not part of a URL or a relative path) or Windows.
_ABS_PATH = re.compile(r"(?<![\w:/.~%-])/(?:[^\s'\"/,;()\[\]{}<>]+/)*[^\s'\"/,;()\[\]{}<>]*"
                       r"|\b[A-Za-z]:\\[^\s'\",;()\[\]{}<>]*")


def file_names_only(value: Any) -> Any:
    """``value`` (a JSON body) with every absolute path in its strings replaced by its last part."""
    if isinstance(value, str):
        return _ABS_PATH.sub(lambda m: re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1] or "/", value)
    if isinstance(value, dict):
        return {k: file_names_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [file_names_only(v) for v in value]
    return value


def with_memory(status: dict, account: dict) -> dict:
    """``status`` (the manager's) with each model's memory in MiB from the one account, and the account."""
    by_role = {(row["role"], row["name"]): row["memory_mib"] for row in account["models"]}
    if status.get("model"):  # the account's figure, not the engine's raw footprint beside it
        status["model"] = {k: v for k, v in one_memory(status["model"]).items() if k != "memory"}
        status["model"]["memory_mib"] = by_role.get(("chat", status["model"]["name"]))
    status["lab_models"] = [{k: v for k, v in one_memory(m).items() if k != "memory"}
                            for m in status.get("lab_models", [])]
    for row in status.get("pool", []):
        chat = status["model"]["memory_mib"] if status.get("model") else None
        row["memory_mib"] = chat if row.get("chat_model") else by_role.get(("pool", row["name"]))
    status["memory_account"] = {k: v for k, v in account.items() if k != "models"} | {
        "models": [{k: v for k, v in row.items() if k != "memory"} for row in account["models"]]}
    return status


def add_ops_routes(app: FastAPI, manager: ModelManager, exporter: PrometheusExporter,
                   policy: AccessPolicy | None = None, exposed: bool = False) -> None:
    @app.get("/health", include_in_schema=True, tags=["ops"])
    def health(request: Request) -> JSONResponse:
        body = with_memory(manager.status(), memory_account(manager, exporter.monitor))
        ready = body["status"] == "ready" or (manager.pool is not None and manager.pool.servable())
        code = 200 if ready else 503
        if policy is not None and policy.configured:
            if policy.http_client_id(request.headers.get("authorization")) is None:
                body = {"status": body["status"]}  # auth is on: paths, models and errors are for logged-in callers
        elif exposed:
            body = file_names_only(body)
        return JSONResponse(body, status_code=code)

    @app.get("/live", tags=["ops"])
    def live() -> JSONResponse:
        """Liveness: the process answers (whether or not a model is loaded)."""
        return JSONResponse({"status": "alive", "model_state": manager.state})

    @app.get("/metrics", tags=["ops"])
    def metrics() -> Response:
        return Response(exporter.render(), media_type=exporter.content_type)
