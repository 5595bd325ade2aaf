"""The streamed reply as typed pieces: the chat service splits the thinking off and parses tool
calls once, and every transport (the chat UI's turn, Gradio's /chat, the Notebook, /v1) shows the
pieces it is given. Scripted replies check each piece exactly; the real model checks that the chat
UI, Gradio's /chat and /v1 show the same greedy reply."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams, TextDelta
from backends.registry import BackendRegistry
from serving.pieces import ReplyDelta, ReplyParser
from tests.conftest import make_manager, make_services
from tests.fakes import FakeBackend, FakeScript
from ui.chat_actions import ChatActions, TurnJob
from ui.chat_turns import group_of, reply_text, thinking_text

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
THINK_THEN_CALL = ["<thi", "nk>Paris is", " a city.</th", "ink>", "<tool_call>",
                   '{"name": "get_weather", "arguments": {"city": "Paris"}}', "</tool_call>"]


def services(script: FakeScript, stream_interval_s: float = 0.0):
    class Tooled(FakeBackend):
        features = frozenset({"tools", "continue_final", "prompt"})

        def __init__(self, cache_dir=None):
            super().__init__(script, cache_dir)

    manager = make_manager(registry=BackendRegistry([Tooled]))
    manager.load(ModelSpec(source="fake-model", backend="fake"))
    return make_services(manager, stream_interval_s=stream_interval_s)


def test_the_service_splits_thinking_and_parses_tool_calls_once_for_every_transport():
    script = FakeScript()
    script.enqueue(THINK_THEN_CALL)
    h = services(script)
    request = ChatRequest((Message("user", "Weather in Paris?"),), SamplingParams(max_new_tokens=16), tools=(WEATHER,))
    stream = h.chat_service.open(request, endpoint="v1")
    pieces = list(stream)
    assert all(isinstance(p, ReplyDelta) for p in pieces)
    assert "".join(p.reasoning for p in pieces) == "Paris is a city."
    assert "".join(p.text for p in pieces) == ""  # the call's markup is not answer text
    assert "".join(p.raw for p in pieces) == "".join(THINK_THEN_CALL)  # what the model wrote, kept
    *body, last = pieces
    assert [(c.name, json.loads(c.arguments)) for c in last.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert not any(p.tool_calls or p.finish_reason or p.stats for p in body)
    assert last.finish_reason == "stop" and last.stats["completion_tokens"] == len(THINK_THEN_CALL)
    assert [p.thinking for p in pieces[:3]] == [False, True, True] and not pieces[3].thinking


def test_a_raw_continuation_is_never_split():
    """The Notebook and /complete show the continuation as written, <think> and all."""
    script = FakeScript()
    script.enqueue(["<think>", "not thinking", "</think>", " rest"])
    h = services(script)
    pieces = list(h.complete_pieces("Once", 16, 0.0, 1.0, 0, 1.0, 0))
    assert "".join(p.text for p in pieces) == "<think>not thinking</think> rest"
    assert not any(p.reasoning or p.tool_calls for p in pieces) and pieces[-1].stats["completion_tokens"] == 4


def test_the_chat_turn_shows_the_pieces_and_gradio_chat_the_whole_text():
    script = FakeScript()
    reply = ["<think>", "They greet", " me.", "</think>", "\n\nHel", "lo!"]
    script.enqueue(reply, reply)
    h = services(script)
    actions = ChatActions(h)
    job, _, _, versions = actions.prepare_send("Hi", [], {})
    assert isinstance(job, TurnJob) and (job.mode, job.text, job.k) == ("send", "Hi", 0)
    *_, last = actions.run_turn(job, versions, "", 16, 0.0, 1.0, 0, 1.0, 0)
    group = group_of(last[0], 0)
    assert thinking_text(group) == "They greet me." and reply_text(group) == "Hello!"
    *_, (text, stats) = h.chat("Hi", [], "", 16, 0.0, 1.0, 0, 1.0, 0)
    assert text == "".join(reply) and stats["completion_tokens"] == len(reply)  # /chat: the model's text as is


def test_coalesced_pieces_hold_everything_since_the_last_one():
    script = FakeScript()
    script.enqueue(["<think>", "a", "b", "</think>"] + [str(i) for i in range(50)])
    h = services(script, stream_interval_s=10.0)  # nothing but the first token and the end get through
    first, last = list(h.chat_pieces("count", [], "", 100, 0.0, 1.0, 0, 1.0, 0))
    assert first.raw == "<think>" and first.thinking and not first.reasoning
    assert last.reasoning == "ab" and last.text == "".join(str(i) for i in range(50)) and not last.thinking
    assert last.stats["completion_tokens"] == 54 and last.finish_reason == "stop"


def test_a_stream_that_ends_without_a_finish_reason_still_releases_what_was_held():
    parser = ReplyParser(ChatRequest((Message("user", "hi"),)))
    assert parser.feed(TextDelta("Hello <thi")) == ReplyDelta("Hello <thi", raw="Hello <thi")
    parser = ReplyParser(ChatRequest((Message("user", "hi"),)))
    held = parser.feed(TextDelta(" <thi"))
    assert (held.text, held.reasoning) == ("", "")  # may still become <think>
    end = parser.end({"completion_tokens": 1})
    assert end.text == " <thi" and end.stats == {"completion_tokens": 1} and end.finish_reason is None


@pytest.mark.slow
def test_the_chat_ui_gradio_chat_and_v1_show_the_same_greedy_reply(live_app, client):
    """One greedy request on the real model, through the chat UI's turn, Gradio's /chat and /v1
    streamed: each transport maps the same pieces, so each shows the same text."""
    message = "Name three colours of the rainbow."
    actions = ChatActions(make_services(live_app.manager))
    job, _, _, versions = actions.prepare_send(message, [], {})
    *_, last = actions.run_turn(job, versions, "", 24, 0.0, 1.0, 0, 1.0, 0)
    shown = reply_text(group_of(last[0], 0))
    assert shown.strip()
    reply, stats = client.predict(message, [], "", 24, 0.0, 1.0, 0, 1.0, 0, api_name="/chat")
    assert reply == shown and stats["completion_tokens"] > 0
    oai = openai.OpenAI(base_url=live_app.url + "/v1", api_key="unused", max_retries=0,
                        http_client=httpx.Client(timeout=120))
    try:
        chunks = list(oai.chat.completions.create(model="default", messages=[{"role": "user", "content": message}],
                                                  max_tokens=24, temperature=0, stream=True))
    finally:
        oai.close()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == shown
