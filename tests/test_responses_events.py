"""The Responses dialect's mapping of every kind of reply piece, placed exactly by a scripted engine
(the embedded model neither thinks nor fails on cue; test_responses_api.py runs the real model):
thinking becomes a ``reasoning`` item before the ``message``, a tool call a ``function_call`` item
after it, and an engine error after the first byte an ``error`` event then ``response.failed``. The
client is the real openai SDK, through the app's ASGI transport."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from backends.errors import InvalidRequest
from serving.api.pipeline import Pipeline
from serving.chat_service import ChatService
from serving.openai.response_store import ResponseStore
from serving.openai.responses import Responses
from tests.fakes import scripted_manager

TOOL = {"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
THOUGHT_AND_CALL = ["<think>", "Oslo is", " cold", "</think>", "Let me", " check.",
                    '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>']


@pytest.fixture
def sdk():
    manager, script = scripted_manager(features=frozenset({"tools", "constraint", "continue_final"}), slots=1)
    pipe = Pipeline(manager, ChatService(manager))
    app = FastAPI()

    @app.post("/v1/responses")
    async def responses(request: Request):
        return await pipe.generate(Responses(ResponseStore()), request)

    http = TestClient(app)
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
    client.script = script
    yield client
    manager.close()


def test_thinking_text_and_a_call_are_three_items_in_order(sdk):
    sdk.script.enqueue(THOUGHT_AND_CALL)
    r = sdk.responses.create(model="scripted", input="Weather in Oslo?", tools=[TOOL])
    assert [o.type for o in r.output] == ["reasoning", "message", "function_call"]
    assert r.output[0].content[0].text == "Oslo is cold" and r.output[0].summary == []
    assert r.output_text == "Let me check."
    assert (r.output[2].name, json.loads(r.output[2].arguments)) == ("get_weather", {"city": "Oslo"})
    assert sdk.script.seen[-1].tools[0]["function"]["name"] == "get_weather"  # the chat shape reached the engine


def test_streamed_thinking_text_and_a_call(sdk):
    sdk.script.enqueue(THOUGHT_AND_CALL)
    events = list(sdk.responses.create(model="scripted", input="Weather in Oslo?", tools=[TOOL], stream=True))
    types = [e.type for e in events]
    assert types == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1, 2]
    final = events[-1].response
    assert [o.type for o in final.output] == ["reasoning", "message", "function_call"]
    assert final.output[1].id == events[9].item.id


def test_a_reasoning_item_handed_back_is_the_assistants_thinking(sdk):
    sdk.script.enqueue(["Done."])
    sdk.responses.create(model="scripted", input=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "Cold."}], tools=[TOOL])
    msgs = sdk.script.seen[-1].messages
    assert [m.role for m in msgs] == ["user", "assistant", "tool"]
    assert msgs[1].reasoning == "hmm" and msgs[1].tool_calls[0]["function"]["name"] == "get_weather"
    assert (msgs[2].tool_call_id, msgs[2].name, msgs[2].content) == ("c1", "get_weather", "Cold.")


def test_an_error_after_the_first_byte_is_an_error_event_then_response_failed(sdk):
    sdk.script.enqueue(["Once", InvalidRequest("the engine gave up"), " never"])
    events = list(sdk.responses.create(model="scripted", input="Hi", stream=True))
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-2].message == "the engine gave up"
    assert events[-1].response.status == "failed" and events[-1].response.error.message == "the engine gave up"
    assert [(o.status, o.content[0].text) for o in events[-1].response.output] == [("incomplete", "Once")]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    sdk.script.enqueue(["Still", " serving"])
    assert sdk.responses.create(model="scripted", input="Hi").output_text == "Still serving"


def test_an_empty_reply_is_still_one_message(sdk):
    sdk.script.enqueue([])
    r = sdk.responses.create(model="scripted", input="Hi")
    assert [o.type for o in r.output] == ["message"] and r.output_text == "" and r.status == "completed"


def test_tools_and_a_format_give_the_engine_a_call_or_the_format(sdk):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    fmt = {"format": {"type": "json_schema", "name": "city", "schema": schema}}
    call = {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": TOOL["parameters"]},
            "required": ["name", "arguments"], "additionalProperties": False}
    sdk.responses.create(model="scripted", input="Hi", tools=[TOOL], text=fmt)
    c = sdk.script.seen[-1].constraint
    assert (c.kind, json.loads(c.schema), c.param) == ("json_schema", {"anyOf": [call, schema]}, "text")
    sdk.responses.create(model="scripted", input="Hi", tools=[TOOL], text=fmt, tool_choice="required")
    c = sdk.script.seen[-1].constraint
    assert (json.loads(c.schema), c.param) == (call, "tools")
    sdk.responses.create(model="scripted", input="Hi", tools=[TOOL], text=fmt, tool_choice="none")
    c = sdk.script.seen[-1].constraint
    assert json.loads(c.schema) == schema and sdk.script.seen[-1].tools == ()
    sdk.responses.create(model="scripted", input="Hi", text={"format": {"type": "json_object"}})
    assert sdk.script.seen[-1].constraint.kind == "json_object"


def test_the_kept_responses_are_bounded_in_count_and_size():
    def turn(text: str) -> list[dict]:
        return [{"role": "user", "content": text}]  # 34 characters of JSON with a one-character text

    by_count = ResponseStore(max_responses=2, max_chars=10_000)
    for rid in ("a", "b", "c"):
        by_count.put(rid, turn(rid))
    assert (by_count.get("a"), by_count.get("b"), by_count.get("c"), len(by_count)) == (None, turn("b"), turn("c"), 2)
    by_size = ResponseStore(max_responses=10, max_chars=120)
    by_size.put("b", turn("b"))
    by_size.put("c", turn("c"))
    by_size.put("d", turn("x" * 40))  # 73 characters: the three pass 120, the oldest goes
    assert (by_size.get("b"), by_size.get("c"), by_size.get("d")) == (None, turn("c"), turn("x" * 40))
    by_size.put("huge", turn("x" * 200))  # larger than the whole store: not kept, nothing dropped for it
    assert by_size.get("huge") is None and by_size.get("c") is not None
