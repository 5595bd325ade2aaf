"""OpenAI's error shape on the shared mapper (``serving/api/errors.py``): ``{"error": {"message",
"type", "param", "code"}}`` with the error's status; in a stream, the same object without ``param``.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from serving.api.errors import ApiError, printable


class OpenAIErrors:
    """``{"error": {"message", "type", "param", "code"}}`` with the error's status; in a stream,
    the same object without ``param``, as OpenAI sends it."""

    def response(self, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"message": printable(err.message), "type": err.type, "param": err.param,
                                       "code": err.code}}, status_code=err.status, headers=err.headers)

    def event(self, err: ApiError) -> dict:
        return {"error": {"message": printable(err.message), "type": err.type, "code": err.code}}


OPENAI_ERRORS = OpenAIErrors()


def error_response(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    """An OpenAI error answer made on the spot (an unknown path, a wrong method)."""
    return OPENAI_ERRORS.response(ApiError(status, message, type_, param, code, headers))
