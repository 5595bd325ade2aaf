"""The /v1 wire shapes with the real `openai` client, over a scripted backend that declares every
feature (UI-logic tests: the real-model versions are in test_v1_features.py). What the engine says
is scripted, so each shape (tool calls, reasoning, logprobs, n choices, legacy completions,
embeddings) is checked exactly, streamed and not."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backends.base import ModelSpec, TextDelta, TokenLogprob
from backends.options import SAMPLERS
from backends.registry import BackendRegistry
from serving.chat_service import ChatService
from serving.openai.routes import add_openai_routes
from tests.conftest import make_manager
from tests.fakes import FakeBackend, FakeScript


class FeaturedBackend(FakeBackend):
    """Scripted pieces, each one token with a made-up logprob (-0.5 * its position)."""

    samplers = frozenset(o.name for o in SAMPLERS)
    features = frozenset({"prompt", "continue_final", "tools", "constraint", "logprobs", "embeddings"})
    capabilities = frozenset({"stream", "tokenize"})

    def stream(self, request, cancel):
        pos = 0
        for d in super().stream(request, cancel):
            if d.text and request.logprobs is not None:
                lp = -0.5 * pos
                pos += 1
                top = tuple((f"alt{k}", lp - k - 1) for k in range(request.logprobs))
                d = TextDelta(d.text, d.tokens, d.finish_reason, d.prompt_tokens, (TokenLogprob(d.text, lp, top=top),))
            yield d

    def tokenize(self, text):
        return [1] + [len(w) for w in text.split()]

    def detokenize(self, ids):
        return " ".join("x" * i for i in ids if i != 1)

    def embed(self, texts, cancel=None, on_input=None):
        return [[float(len(t)), 0.5, -1.25] for t in texts]


@pytest.fixture
def v1():
    script = FakeScript(slots=3)

    class Scripted(FeaturedBackend):
        def __init__(self, cache_dir=None):
            super().__init__(script, cache_dir)

    manager = make_manager(registry=BackendRegistry([Scripted]))
    manager.load(ModelSpec(source="scripted", backend="fake", n_ctx=512))
    app = FastAPI()
    add_openai_routes(app, manager, ChatService(manager))
    http = TestClient(app)
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
    client.script = script
    client.http = http
    yield client
    manager.close()


MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = ['<tool_call>', '{"name": "get_weather", ', '"arguments": {"city": ', '"Paris"}}', '</tool_call>']


def test_tool_calls_non_streamed_and_streamed(v1):
    v1.script.enqueue(CALL, CALL)
    r = v1.chat.completions.create(model="default", messages=MSG, tools=[WEATHER])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert v1.script.seen[-1].tools[0]["function"]["name"] == "get_weather"  # the template gets the tools
    chunks = list(v1.chat.completions.create(model="default", messages=MSG, tools=[WEATHER], stream=True))
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].id.startswith("call_")
    assert deltas[0].function.name == "get_weather" and json.loads(deltas[0].function.arguments) == {"city": "Paris"}
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_plain_answer_with_tools_streams_as_content(v1):
    v1.script.enqueue(["It ", "is ", "sunny."])
    r = v1.chat.completions.create(model="default", messages=MSG, tools=[WEATHER])
    assert r.choices[0].message.content == "It is sunny." and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"


def test_reasoning_is_split_from_the_content(v1):
    think = ["<think>", "The user ", "wants weather.", "</think>", "\n\n", "Sunny."]
    v1.script.enqueue(think, think)
    r = v1.chat.completions.create(model="default", messages=MSG)
    assert r.choices[0].message.content == "Sunny."
    assert r.choices[0].message.reasoning_content == "The user wants weather."
    chunks = list(v1.chat.completions.create(model="default", messages=MSG, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks)
    assert (reasoning, content) == ("The user wants weather.", "Sunny.")


def test_logprobs_shape_streamed_equals_non_streamed(v1):
    v1.script.enqueue(["Sun", "ny", "."], ["Sun", "ny", "."])
    r = v1.chat.completions.create(model="default", messages=MSG, logprobs=True, top_logprobs=2)
    lps = r.choices[0].logprobs.content
    assert [t.token for t in lps] == ["Sun", "ny", "."]
    assert [t.logprob for t in lps] == [0.0, -0.5, -1.0]
    assert lps[1].bytes == list(b"ny") and [a.token for a in lps[1].top_logprobs] == ["alt0", "alt1"]
    chunks = list(v1.chat.completions.create(model="default", messages=MSG, logprobs=True, top_logprobs=2, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in lps]


def test_n_choices_run_side_by_side_and_are_indexed(v1):
    v1.script.enqueue(["A"], ["B"], ["C"])
    r = v1.chat.completions.create(model="default", messages=MSG, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert sorted(c.message.content for c in r.choices) == ["A", "B", "C"]
    assert r.usage.completion_tokens == 3
    with pytest.raises(openai.BadRequestError) as err:
        v1.chat.completions.create(model="default", messages=MSG, n=4)  # 3 slots
    assert err.value.body["param"] == "n" and "at most 3" in err.value.body["message"]


def test_completions_legacy_shape_and_prompt_lists(v1):
    v1.script.enqueue(["upon", " a", " time"])
    r = v1.completions.create(model="default", prompt="Once", max_tokens=5, logprobs=1)
    c = r.choices[0]
    assert r.object == "text_completion" and c.text == "upon a time" and c.finish_reason == "stop"
    assert c.logprobs.tokens == ["upon", " a", " time"] and c.logprobs.text_offset == [0, 4, 6]
    assert c.logprobs.token_logprobs == [0.0, -0.5, -1.0] and c.logprobs.top_logprobs[0] == {"alt0": -1.0}
    assert v1.script.seen[-1].prompt == "Once" and v1.script.seen[-1].messages == ()
    v1.script.enqueue(["1"], ["2"])
    r = v1.completions.create(model="default", prompt=["a", "b"], max_tokens=2)
    assert [c.index for c in r.choices] == [0, 1] and sorted(c.text for c in r.choices) == ["1", "2"]
    v1.script.enqueue(["x", "y"])
    chunks = list(v1.completions.create(model="default", prompt="go", max_tokens=5, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "xy"
    with pytest.raises(openai.BadRequestError) as err:
        v1.completions.create(model="default", prompt=["a", "b", "c", "d"])
    assert err.value.body["param"] == "prompt"
    for bad in ({"echo": True}, {"suffix": "z"}):
        with pytest.raises(openai.BadRequestError) as err:
            v1.completions.create(model="default", prompt="a", **bad)
        assert err.value.body["param"] == next(iter(bad))


def test_embeddings_float_and_base64(v1):
    r = v1.embeddings.create(model="default", input=["hello world", "hi"])
    assert [d.embedding for d in r.data] == [[11.0, 0.5, -1.25], [2.0, 0.5, -1.25]]
    assert r.usage.prompt_tokens == 3 + 2
    raw = v1.http.post("/v1/embeddings", json={"model": "default", "input": "hey", "encoding_format": "base64"}).json()
    vec = struct.unpack("<3f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(vec) == [3.0, 0.5, -1.25]
    bad = v1.http.post("/v1/embeddings", json={"model": "default", "input": "a", "dimensions": 2})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "dimensions"


def test_tokenize_and_detokenize_in_llama_server_shapes(v1):
    http: httpx.Client = v1.http
    assert http.post("/tokenize", json={"content": "ab cde"}).json() == {"tokens": [2, 3]}
    assert http.post("/tokenize", json={"content": "ab cde", "add_special": True}).json() == {"tokens": [1, 2, 3]}
    pieces = http.post("/tokenize", json={"content": "ab", "with_pieces": True}).json()
    assert pieces == {"tokens": [{"id": 2, "piece": "xx"}]}
    assert http.post("/detokenize", json={"tokens": [2, 3]}).json() == {"content": "xx xxx"}
    assert http.post("/detokenize", json={"tokens": "nope"}).status_code == 400
