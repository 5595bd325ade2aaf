"""Operations endpoints: GET /health (readiness), GET /live (liveness), GET /metrics (Prometheus).

/health: 200 with the serving model while one is ready, 503 (JSON) while loading or empty. With
--auth or --api-key, callers without credentials get the status alone (no paths, no last error).
While a new model loads beside a serving one, the app is still ready (it keeps answering with the
old model) and the body says what is loading.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from backends.manager import ModelManager
from monitoring.prometheus import PrometheusExporter
from serving.auth import AccessPolicy


def add_ops_routes(app: FastAPI, manager: ModelManager, exporter: PrometheusExporter,
                   policy: AccessPolicy | None = None) -> None:
    @app.get("/health", include_in_schema=True, tags=["ops"])
    def health(request: Request) -> JSONResponse:
        body = manager.status()
        code = 200 if body["status"] == "ready" else 503
        if policy is not None and policy.ui_login is not None \
                and policy.http_client_id(request.headers.get("authorization")) is None:
            body = {"status": body["status"]}  # auth is on: paths, models and errors are for logged-in callers
        return JSONResponse(body, status_code=code)

    @app.get("/live", tags=["ops"])
    def live() -> JSONResponse:
        """Liveness: the process answers (whether or not a model is loaded)."""
        return JSONResponse({"status": "alive", "model_state": manager.state})

    @app.get("/metrics", tags=["ops"])
    def metrics() -> Response:
        return Response(exporter.render(), media_type=exporter.content_type)
