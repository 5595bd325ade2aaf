"""Answers, in front of Gradio, the requests Gradio itself would turn into a 500 or a broken stream.

- ``POST /gradio_api/call/<name>`` (and ``/run/<name>``) for a name no endpoint has: 404.
- ``GET /gradio_api/call/<name>/<event_id>`` for an event id the queue never issued (or already
  delivered): 404, instead of an event stream that aborts.
- A body that is not JSON, nests deeper than Python's parser goes (50,000 ``[``: a RecursionError
  in Gradio), or whose ``data`` is not a list: 400 with a sentence, not a 500 or pydantic's dump.
- The page's own events, ``POST /gradio_api/queue/join`` and ``/gradio_api/run/predict``, address a
  function by ``fn_index``: one no event has (99999, -1) is a KeyError in Gradio, a missing one on
  ``run/predict`` a FnIndexInferError, fewer ``data`` items than the function's inputs a ValueError:
  404 / 400 here instead of Gradio's 500.

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
            if parts[:2] in (["queue", "join"], ["run", INTERNAL]):
                refused = self.fn_problem(json.loads(body), internal=parts[0] == "run")
                if refused:
                    await error(*refused)(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def event_fns(self, session_hash) -> dict:
        """The functions a request of ``session_hash`` can address by fn_index (as Gradio looks them
        up: the session's own, which ``gr.render`` may extend, else the app's), without creating a session."""
        holder = getattr(self.blocks, "state_holder", None)
        if isinstance(session_hash, str) and holder is not None and session_hash in holder:
            return holder.session_data[session_hash].blocks_config.fns
        return self.blocks.fns

    def fn_problem(self, body: dict, internal: bool) -> tuple[int, str, str] | None:
        """(status, message, code) when ``body``'s fn_index would fail inside Gradio; None when it is fine
        (or absent on queue/join, which Gradio answers with its own 400)."""
        index = body.get("fn_index")
        if index is None:
            if internal:
                return 400, "run/predict needs the fn_index of the event to run (or POST /gradio_api/call/<name>).", \
                    "missing_fn_index"
            return None
        index = _as_index(index)
        if index is None:
            return None  # Gradio's own 422 says what type it wants
        fn = self.event_fns(body.get("session_hash")).get(index)
        if fn is None:
            return 404, f"No event with fn_index {index} on this server.", "unknown_fn_index"
        inputs = len(getattr(fn, "inputs", None) or ())
        if internal and not getattr(fn, "cancels", None) and len(body.get("data") or ()) < inputs:
            return 400, f"The event with fn_index {index} takes {inputs} input(s); {len(body.get('data') or ())} given.", \
                "missing_inputs"
        return None


def _as_index(value) -> int | None:
    """``value`` as the int Gradio's pydantic body would make of it (7, "7", 7.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


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
