"""The API pipeline runs any dialect that supplies only its translation: here a made-up one (a
prompt in, NDJSON lines out, ``{"error": "..."}`` errors) defined in this file alone, with nothing
added to serving/api/ or serving/openai/. It gets what /v1 gets without writing it: parsing, the model check, the
ChatService (slots, rate limits, timing under its own endpoint label), waiting for the first token,
collecting, in-band errors after the first byte, and every failure in its own error shape.

The engine is scripted (FakeBackend) so every failure can be placed exactly; the real-model /v1
tests (test_openai_api.py, test_v1_features.py) run the same pipeline for OpenAI's dialect."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel

from backends.base import SamplingParams
from backends.errors import Busy, ContextLengthExceeded, InvalidRequest
from serving.api.errors import ApiError
from serving.api.pipeline import Endpoint, Pipeline
from serving.api.stream import EventFormat
from serving.chat_service import ChatService, ChatStream
from serving.pieces import ReplyDelta
from serving.requests import completion_request
from tests.fakes import scripted_manager


class LinesRequest(BaseModel):
    model: str
    prompt: str
    stream: bool = True


class LinesErrors:
    def response(self, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)

    def event(self, err: ApiError) -> dict:
        return {"error": err.message}


class LinesReply:
    def __init__(self, streams: Sequence[ChatStream]):
        self.streams = streams
        self.text: list[str] = []
        self.reason: str | None = None

    def head(self) -> list[dict]:
        return [{"started": True}]

    def feed(self, index: int, delta: ReplyDelta) -> Iterator[dict]:
        if delta.text:
            self.text.append(delta.text)
            yield {"response": delta.text, "done": False}
        if delta.finish_reason:
            self.reason = delta.finish_reason
            yield {"response": "", "done": True, "done_reason": delta.finish_reason}

    def tail(self) -> list[dict]:
        return [{"tokens": self.streams[0].stats.completion_tokens}]

    def failed(self, err: ApiError) -> list[dict]:
        return [{"response": "", "done": True, "done_reason": "error"}]

    def body(self) -> dict:
        return {"response": "".join(self.text), "done": True, "done_reason": self.reason}


class Lines(Endpoint):
    """The whole dialect: schema, conversion, reply, error shape, stream format."""

    schema = LinesRequest
    errors = LinesErrors()
    format = EventFormat("application/x-ndjson", lambda event: json.dumps(event) + "\n")
    label = "lines"


    @staticmethod
    def convert(body: LinesRequest, pipe: Pipeline):
        return [completion_request(body.prompt, SamplingParams(max_new_tokens=8), (), pipe.chat.limits)], None

    @staticmethod
    def reply(body: LinesRequest, plan: None, model: str, streams: Sequence[ChatStream]) -> LinesReply:
        return LinesReply(streams)


@pytest.fixture
def lines():
    manager, script = scripted_manager(features=frozenset({"prompt"}), slots=2)
    pipe = Pipeline(manager, ChatService(manager))
    app = FastAPI()

    @app.post("/api/lines")
    async def handler(request: Request):
        return await pipe.generate(Lines(), request)

    client = TestClient(app)
    client.script = script
    client.manager = manager
    yield client
    manager.close()


def ndjson(response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines()]


def test_a_dialect_streams_in_its_own_format(lines):
    lines.script.enqueue(["Once", " upon", " a time"])
    r = lines.post("/api/lines", json={"model": "scripted", "prompt": "Tell me"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["cache-control"] == "no-cache"
    assert ndjson(r) == [{"started": True}, {"response": "Once", "done": False}, {"response": " upon", "done": False},
                         {"response": " a time", "done": False}, {"response": "", "done": True, "done_reason": "stop"},
                         {"tokens": 3}]
    assert lines.script.seen[-1].prompt == "Tell me"
    assert lines.manager.metrics.recent(1)[0].endpoint == "lines"


def test_a_dialect_collects_its_whole_body(lines):
    lines.script.enqueue(["Once", " upon"])
    r = lines.post("/api/lines", json={"model": "default", "prompt": "Tell me", "stream": False})
    assert r.status_code == 200
    assert r.json() == {"response": "Once upon", "done": True, "done_reason": "stop"}


@pytest.mark.parametrize("body, status, message", [
    (b"{nope", 400, "The request body is not valid JSON."),
    (b"[1, 2]", 400, "The request body must be a JSON object."),
    (b'{"model": "scripted"}', 400, "prompt: Field required"),
    (b'{"model": "scripted", "prompt": "\\ud800"}', 400, "prompt contains an invalid character at position 0 (a lone "
                                                        "UTF-16 surrogate): send valid Unicode text."),
    (b'{"model": "other", "prompt": "x"}', 404, "The model 'other' does not exist on this server; it serves 'scripted'."),
    (b'{"model": "scripted", "prompt": ""}', 400, "The prompt is empty: type something to continue."),
])
def test_every_refusal_is_in_the_dialects_error_shape(lines, body, status, message):
    r = lines.post("/api/lines", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (status, {"error": message})


@pytest.mark.parametrize("stream", [True, False])
def test_an_engine_error_before_the_first_token_is_a_plain_error(lines, stream):
    lines.script.enqueue(ContextLengthExceeded("The conversation is too long."))
    r = lines.post("/api/lines", json={"model": "scripted", "prompt": "x", "stream": stream})
    assert (r.status_code, r.json()) == (400, {"error": "The conversation is too long."})
    lines.script.enqueue(Busy("Busy: retry later.", retry_after=1.5))
    r = lines.post("/api/lines", json={"model": "scripted", "prompt": "x", "stream": stream})
    assert (r.status_code, r.json(), r.headers["retry-after"]) == (429, {"error": "Busy: retry later."}, "2")


def test_an_error_after_the_first_byte_travels_in_band_and_ends_the_stream(lines):
    lines.script.enqueue(["Once", InvalidRequest("the engine gave up"), " never"])
    r = lines.post("/api/lines", json={"model": "scripted", "prompt": "x"})
    assert r.status_code == 200
    assert ndjson(r) == [{"started": True}, {"response": "Once", "done": False}, {"error": "the engine gave up"},
                         {"response": "", "done": True, "done_reason": "error"}]
    lines.script.enqueue(["Once", RuntimeError("a bug")])
    r = lines.post("/api/lines", json={"model": "scripted", "prompt": "x"})
    assert ndjson(r)[-2:] == [{"error": "Internal error (RuntimeError)."},
                              {"response": "", "done": True, "done_reason": "error"}]
    lines.script.enqueue(["Once", RuntimeError("a bug")])
    r = lines.post("/api/lines", json={"model": "scripted", "prompt": "x", "stream": False})
    assert (r.status_code, r.json()) == (500, {"error": "Internal error (RuntimeError)."})
    lines.script.enqueue(["Still", " serving"])
    assert lines.post("/api/lines", json={"model": "scripted", "prompt": "x", "stream": False}).json()["response"] == \
        "Still serving"
