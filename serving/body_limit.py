"""Request bodies are bounded before anything parses them (``--max-body-bytes``).

Pure ASGI, in front of every route: a declared ``Content-Length`` over the limit is answered 413
at once, without reading; a body sent without one (chunked) is read up to the limit and answered
413 as soon as it passes it. Bodies within the limit are replayed to the app unchanged. Gradio's
file upload route has its own limit (``--max-upload-bytes``, ``serving/uploads.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

EXEMPT_PREFIXES = ("/gradio_api/upload",)
_WITH_BODY = {"POST", "PUT", "PATCH"}


def too_large(limit: int, path: str = "", refusal: Callable[[str, int, str], Any] | None = None) -> JSONResponse:
    """The 413, in the shape of the API dialect that owns ``path`` (``refusal``; None: OpenAI's)."""
    message = f"The request body is larger than this server accepts ({limit:,} bytes, --max-body-bytes)."
    shaped = refusal(path, 413, message) if refusal else None
    return shaped or JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                             "code": "payload_too_large"}}, status_code=413)


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int, refusal: Callable[[str, int, str], Any] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.refusal = refusal

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["method"] not in _WITH_BODY
                or scope["path"].startswith(EXEMPT_PREFIXES)):
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                await _bad_length(scope, receive, send)
                return
            if size > self.max_bytes:
                await too_large(self.max_bytes, scope["path"], self.refusal)(scope, receive, send)
                return
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await too_large(self.max_bytes, scope["path"], self.refusal)(scope, receive, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        await self.app(scope, replay(b"".join(chunks), receive), send)


def replay(body: bytes, receive):
    """A ``receive`` that gives ``body`` (already read) once, then the client's next messages."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would say it

    return replayed


async def _bad_length(scope, receive, send):
    response = JSONResponse({"error": {"message": "Invalid Content-Length header.", "type": "invalid_request_error",
                                       "param": None, "code": None}}, status_code=400)
    await response(scope, receive, send)
