"""Answers, in front of Gradio, the requests Gradio itself would turn into a 500 or a broken stream.

- ``POST /gradio_api/call/<name>`` (and ``/run/<name>``) for a name no endpoint has: 404.
- ``GET /gradio_api/call/<name>/<event_id>`` for an event id the queue never issued (or already
  delivered): 404, instead of an event stream that aborts.
- A body that is not JSON, nests deeper than Python's parser goes (50,000 ``[``: a RecursionError
  in Gradio), or whose ``data`` is not a list: 400 with a sentence, not a 500 or pydantic's dump.

Takes the Blocks as an object (no gradio import): it reads the API names from ``blocks.fns`` and
the queue's own event tables. The body arrives already bounded (``serving.body_limit``).
"""

from __future__ import annotations

import json

from starlette.responses import JSONResponse

from serving.body_limit import replay

PREFIX = "/gradio_api/"
INTERNAL = "predict"  # /gradio_api/run/predict: the page's own unqueued events (by fn_index), not an API name


def error(status: int, message: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
                        status_code=status)


class GradioGuardMiddleware:
    def __init__(self, app, blocks):
        self.app = app
        self.blocks = blocks

    def api_names(self) -> set[str]:
        return {fn.api_name for fn in self.blocks.fns.values() if getattr(fn, "api_name", None)}

    def event_known(self, event_id: str) -> bool:
        queue = self.blocks._queue
        if event_id in queue.event_ids_to_events:
            return True
        return any(event_id in ids for ids in list(queue.pending_event_ids_session.values()))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        parts = [p for p in scope["path"][len(PREFIX):].split("/") if p]
        method = scope["method"]
        if (len(parts) >= 2 and parts[0] in ("call", "run") and parts[1] not in self.api_names()
                and parts[:2] != ["run", INTERNAL]):
            await error(404, f"No API endpoint named /{parts[1][:100]} on this server: see 'Use via API'.",
                        "unknown_api_name")(scope, receive, send)
            return
        if method == "GET" and len(parts) == 3 and parts[0] == "call" and not self.event_known(parts[2]):
            await error(404, "Unknown or finished event id: POST to /gradio_api/call/<name> for a new one.",
                        "unknown_event_id")(scope, receive, send)
            return
        if method == "POST" and parts and parts[0] in ("call", "run", "queue"):
            body, receive = await _read(receive)
            if body is None:
                return
            problem = _body_problem(body)
            if problem:
                await error(400, problem, "invalid_json")(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read(receive):
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, receive
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    return body, replay(body, receive)


def _body_problem(body: bytes) -> str | None:
    """Why Gradio would fail on this body (in words), or None to let Gradio read it."""
    try:
        data = json.loads(body)
    except RecursionError:
        return "The request body nests JSON too deeply."
    except (ValueError, UnicodeDecodeError):
        return "The request body is not valid JSON: send {\"data\": [the endpoint's inputs]}."
    if not isinstance(data, dict) or not isinstance(data.get("data", []), list):
        return "The request body must be a JSON object whose \"data\" is the list of the endpoint's inputs."
    return None
