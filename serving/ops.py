"""Operations endpoints: GET /health (readiness), GET /live (liveness), GET /metrics (Prometheus).

/health: 200 with the serving model while one is ready, 503 (JSON) while loading or empty.
While a new model loads beside a serving one, the app is still ready (it keeps answering with the
old model) and the body says what is loading.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from backends.manager import ModelManager
from monitoring.prometheus import PrometheusExporter


def add_ops_routes(app: FastAPI, manager: ModelManager, exporter: PrometheusExporter) -> None:
    @app.get("/health", include_in_schema=True, tags=["ops"])
    def health() -> JSONResponse:
        body = manager.status()
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    @app.get("/live", tags=["ops"])
    def live() -> JSONResponse:
        """Liveness: the process answers (whether or not a model is loaded)."""
        return JSONResponse({"status": "alive", "model_state": manager.state})

    @app.get("/metrics", tags=["ops"])
    def metrics() -> Response:
        return Response(exporter.render(), media_type=exporter.content_type)
