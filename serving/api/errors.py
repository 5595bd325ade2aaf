"""The one error mapper of the API edge: every failure of a request becomes an ``ApiError`` here,
whatever raised it, and a dialect (OpenAI, Anthropic, Ollama) only decides how that error looks on
the wire (its ``ErrorShape``, in its own package).

- a typed error (``backends/errors.py``): its status, sentence, type, param and code; ``Retry-After``
  when it says when to come back (rate limits, a full queue);
- a body that is not valid JSON, not an object, or fails its schema: a 400 naming the field
  (``invalid_body``);
- anything else is a bug: logged with its traceback, answered as a 500 that names only its class.

Before the first streamed byte an error is a plain HTTP answer (``ErrorShape.response``); after it,
the status line is gone and the error travels in band as one stream event (``ErrorShape.event``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from backends.errors import BackendError, InvalidRequest

log = logging.getLogger("quantlab.api")


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
    log.error("API %s failed", where, exc_info=exc)
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


def printable(message: str) -> str:
    """``message`` as valid UTF-8 (it may quote the client's bad text)."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")
