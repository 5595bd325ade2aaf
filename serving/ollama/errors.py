"""Ollama's error shape on the shared mapper (``serving/api/errors.py``): ``{"error": "..."}`` with
the error's status; in a stream, the same object as one NDJSON line (Ollama's clients raise it)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from serving.api.errors import ApiError, printable


class OllamaErrors:
    def event(self, err: ApiError) -> dict:
        return {"error": printable(err.message)}

    def response(self, err: ApiError) -> JSONResponse:
        return JSONResponse(self.event(err), status_code=err.status, headers=err.headers)


OLLAMA_ERRORS = OllamaErrors()


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """An Ollama error answer made on the spot (an unknown path, a wrong method)."""
    return OLLAMA_ERRORS.response(ApiError(status, message, "", headers=headers))


def refusal(path: str, status: int, message: str) -> JSONResponse | None:
    """A refusal made before any route runs (a failed login, a body over the size limit) in
    Ollama's shape when ``path`` is under /api (None for any other path)."""
    return error_response(status, message) if path == "/api" or path.startswith("/api/") else None
