"""An unknown path anywhere on the server answers an OpenAI-shaped 404, not FastAPI's bare
``{"detail": "Not Found"}``: a client with a wrong base URL (``/v2/...``, a missing ``/v1``) is told
which path does not exist and where the API is. Paths under ``/v1`` have their own catch-all
(``routes.py``), ``/api/*`` answers in Ollama's shape; this covers the rest, including what the
mounted Gradio app does not know. Only that exact default body is replaced: every other 404 (an
unknown model, a missing file) keeps its own message.
"""

from __future__ import annotations

from serving.api.errors import ApiError
from serving.openai.errors import OPENAI_ERRORS

DEFAULT_BODY = b'{"detail":"Not Found"}'


def _body(path: str) -> bytes:
    err = ApiError(404, f"Unknown endpoint {path}. The OpenAI-compatible API is under /v1 (/v1/chat/completions, "
                        "/v1/models, ...); the web UI is at /.", "invalid_request_error", code="unknown_url")
    return bytes(OPENAI_ERRORS.response(err).body)


class NotFoundMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict = {}
        chunks: list[bytes] = []

        async def watch(message):
            if message["type"] == "http.response.start" and message["status"] == 404:
                held["start"] = message
                return
            if "start" not in held:
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            start = held.pop("start")
            if body.strip() == DEFAULT_BODY:
                body = _body(scope.get("path", ""))
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                start = {**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, watch)
