"""Anthropic's error shape on the shared mapper (``serving/api/errors.py``): ``{"type": "error",
"error": {"type", "message"}}`` with the error's status; in a stream, the same object as an ``error``
event. The type follows the status, as Anthropic's documented error types do."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from serving.api.errors import ApiError, printable

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
         529: "overloaded_error"}


def error_type(status: int) -> str:
    return TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


class AnthropicErrors:
    def event(self, err: ApiError) -> dict:
        return {"type": "error", "error": {"type": error_type(err.status), "message": printable(err.message)}}

    def response(self, err: ApiError) -> JSONResponse:
        return JSONResponse(self.event(err), status_code=err.status, headers=err.headers)


ANTHROPIC_ERRORS = AnthropicErrors()


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """An Anthropic error answer made on the spot (a wrong method, an unknown path)."""
    return ANTHROPIC_ERRORS.response(ApiError(status, message, error_type(status), headers=headers))


def refusal(path: str, status: int, message: str) -> JSONResponse | None:
    """A refusal made before any route runs (a failed login, a body over the size limit) in
    Anthropic's shape when ``path`` is Anthropic's (None for any other path)."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return error_response(status, message)
    return None
