"""What a real model cannot be made to do on cue, placed exactly with a scripted engine (FakeBackend):
an engine error after the first streamed byte travels in band in each dialect's own way (Anthropic:
an ``error`` event, the stream ends; Ollama: an ``{"error"}`` line, the stream ends), one before the
first byte is a plain error answer in its shape with its status and Retry-After, and thinking text
comes back as Anthropic's thinking block and Ollama's ``thinking`` field. The real-model tests
(test_anthropic_api.py, test_ollama_api.py) run the same routes with the real clients."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backends.errors import Busy, InvalidRequest
from serving.anthropic.routes import add_anthropic_routes
from serving.chat_service import ChatService
from serving.ollama.routes import add_ollama_routes
from tests.fakes import scripted_manager

MSG = [{"role": "user", "content": "Tell me"}]


@pytest.fixture
def api():
    manager, script = scripted_manager(features=frozenset(), slots=2)
    app = FastAPI()
    chat = ChatService(manager)
    add_anthropic_routes(app, manager, chat)
    add_ollama_routes(app, manager, chat)
    client = TestClient(app)
    client.script = script
    yield client
    manager.close()


def sse(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_anthropic_stream_ends_with_an_error_event_after_the_first_byte(api):
    api.script.enqueue(["Once", InvalidRequest("the engine gave up"), " never"])
    r = api.post("/v1/messages", json={"model": "scripted", "max_tokens": 8, "messages": MSG, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert [name for name, _ in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert all(name == data["type"] for name, data in events)
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "Once"}
    assert events[-1][1] == {"type": "error", "error": {"type": "invalid_request_error",
                                                        "message": "the engine gave up"}}


def test_anthropic_refusal_before_the_first_byte_is_a_plain_error(api):
    api.script.enqueue(Busy("Busy: retry later.", retry_after=1.5))
    r = api.post("/v1/messages", json={"model": "scripted", "max_tokens": 8, "messages": MSG, "stream": True})
    assert (r.status_code, r.headers["retry-after"]) == (429, "2")
    assert r.json() == {"type": "error", "error": {"type": "rate_limit_error", "message": "Busy: retry later."}}


def test_anthropic_thinking_becomes_a_thinking_block(api):
    api.script.enqueue(["<think>", "hmm", "</think>", "Yes"])
    body = api.post("/v1/messages", json={"model": "scripted", "max_tokens": 8, "messages": MSG}).json()
    assert [(b["type"], b.get("thinking") or b.get("text")) for b in body["content"]] == [("thinking", "hmm"),
                                                                                          ("text", "Yes")]
    api.script.enqueue(["<think>", "hmm", "</think>", "Yes"])
    r = api.post("/v1/messages", json={"model": "scripted", "max_tokens": 8, "messages": MSG, "stream": True})
    deltas = [d["delta"] for name, d in sse(r.text) if name == "content_block_delta"]
    assert deltas == [{"type": "thinking_delta", "thinking": "hmm"}, {"type": "text_delta", "text": "Yes"}]


def test_ollama_stream_ends_with_an_error_line_after_the_first_byte(api):
    api.script.enqueue(["Once", InvalidRequest("the engine gave up"), " never"])
    r = api.post("/api/chat", json={"model": "scripted:latest", "messages": MSG})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[0]["message"] == {"role": "assistant", "content": "Once"} and lines[0]["done"] is False
    assert lines[-1] == {"error": "the engine gave up"} and len(lines) == 2
    api.script.enqueue(Busy("Busy: retry later.", retry_after=1.5))
    r = api.post("/api/generate", json={"model": "scripted", "prompt": "x"})
    assert (r.status_code, r.json(), r.headers["retry-after"]) == (429, {"error": "Busy: retry later."}, "2")


def test_ollama_thinking_is_its_own_field(api):
    api.script.enqueue(["<think>", "hmm", "</think>", "Yes"])
    body = api.post("/api/chat", json={"model": "scripted", "messages": MSG, "stream": False}).json()
    assert body["message"] == {"role": "assistant", "content": "Yes", "thinking": "hmm"}
    assert (body["done"], body["done_reason"], body["eval_count"]) == (True, "stop", 4)
