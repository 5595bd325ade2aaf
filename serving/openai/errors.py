"""The one error mapper of the API edge: every failure of a request becomes an ``ApiError`` here,
whatever raised it, and a dialect only decides how that error looks on the wire.

- a typed error (``backends/errors.py``): its status, sentence, type, param and code; ``Retry-After``
  when it says when to come back (rate limits, a full queue);
- a body that is not valid JSON, not an object, or fails its schema: a 400 naming the field
  (``invalid_body``);
- anything else is a bug: logged with its traceback, answered as a 500 that names only its class.

Before the first streamed byte an error is a plain HTTP answer (``ErrorShape.response``); after it,
the status line is gone and the error travels in band as one stream event (``ErrorShape.event``).
OpenAI's shape is ``OPENAI_ERRORS``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from backends.errors import BackendError, InvalidRequest

log = logging.getLogger("quantlab.v1")


@dataclass(frozen=True)
class ApiError:
    """One failure, in no dialect's shape yet."""

    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None


def api_error(exc: BaseException, where: str = "request") -> ApiError:
    """``exc`` as the error the client is told about; a bug (not a typed error) is logged first,
    ``where`` saying whether it broke the request or its stream."""
    if isinstance(exc, BackendError):
        headers = None
        retry = getattr(exc, "retry_after", None)
        if retry is not None:
            headers = {"Retry-After": str(max(1, int(retry + 0.999)))}
        return ApiError(exc.http_status, str(exc), exc.error_type, getattr(exc, "param", None), exc.code, headers)
    log.error("v1 %s failed", where, exc_info=exc)
    return ApiError(500, f"Internal error ({type(exc).__name__}).", "server_error")


def invalid_body(exc: ValidationError) -> InvalidRequest:
    """A schema's first complaint about a body, as the 400 that names its field."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    return InvalidRequest(f"{loc}: {msg}" if loc else msg, str(err["loc"][0]) if err.get("loc") else None)


class ErrorShape(Protocol):
    """How one dialect writes an error: as the whole answer, or as an event inside its stream."""

    def response(self, err: ApiError) -> JSONResponse: ...

    def event(self, err: ApiError) -> dict: ...


def _printable(message: str) -> str:
    return message.encode("utf-8", "backslashreplace").decode("utf-8")  # may quote the client's bad text


class OpenAIErrors:
    """``{"error": {"message", "type", "param", "code"}}`` with the error's status; in a stream,
    the same object without ``param``, as OpenAI sends it."""

    def response(self, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"message": _printable(err.message), "type": err.type, "param": err.param,
                                       "code": err.code}}, status_code=err.status, headers=err.headers)

    def event(self, err: ApiError) -> dict:
        return {"error": {"message": _printable(err.message), "type": err.type, "code": err.code}}


OPENAI_ERRORS = OpenAIErrors()


def error_response(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    """An OpenAI error answer made on the spot (an unknown path, a wrong method)."""
    return OPENAI_ERRORS.response(ApiError(status, message, type_, param, code, headers))
