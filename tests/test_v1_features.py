"""/v1's features with the real `openai` client against the app serving the embedded model (llama.cpp):
structured outputs (``chat.completions.parse`` with a Pydantic model), a full tool-call round trip,
logprobs streamed and not, n choices in the batch slots, text completions, embeddings, and
llama-server's /tokenize and /detokenize."""

from __future__ import annotations

import base64
import json
import math
import struct
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from tests.test_openai_api import model_id


@pytest.fixture(scope="module")
def oai(live_oai):
    return live_oai


class City(BaseModel):
    name: str = Field(max_length=30)
    country: str = Field(max_length=30)
    population_millions: float


TOPICS = ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Delhi", "Rome", "Seoul", "Quito",
          "Berlin", "Madrid", "Nairobi", "Hanoi", "Dublin", "Lisbon", "Manila", "Bogota", "Vienna", "Athens"]


def test_structured_outputs_parse_into_the_pydantic_model_every_time(oai):
    m = model_id(oai)

    def one(i: int):
        r = oai.chat.completions.parse(model=m, response_format=City, max_tokens=120, temperature=0.7, seed=i,
                                       messages=[{"role": "user", "content": f"Describe {TOPICS[i]} as JSON."}])
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        return r.choices[0].message.parsed

    with ThreadPoolExecutor(4) as pool:  # side by side in the model's batch slots
        parsed = list(pool.map(one, range(len(TOPICS))))
    assert len(parsed) == 20 and all(isinstance(p, City) for p in parsed)
    assert len({p.model_dump_json() for p in parsed}) > 1  # really generated, not one canned answer


def test_json_mode_streamed_is_an_object(oai):
    chunks = oai.chat.completions.create(model=model_id(oai), messages=[{"role": "user", "content": "A JSON user."}],
                                         response_format={"type": "json_object"}, max_tokens=80, temperature=0,
                                         stream=True)
    pieces, finish = [], None
    for c in chunks:
        if c.choices:
            pieces.append(c.choices[0].delta.content or "")
            finish = c.choices[0].finish_reason or finish
    if finish == "stop":
        assert isinstance(json.loads("".join(pieces)), dict)
    else:
        assert "".join(pieces).lstrip().startswith("{")


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"]}}}
UNITS = {"type": "function", "function": {
    "name": "convert_units", "description": "Convert a value between units.",
    "parameters": {"type": "object", "properties": {"value": {"type": "number"}, "to": {"enum": ["C", "F"]}},
                   "required": ["value", "to"]}}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_call_round_trip(oai, stream):
    m = model_id(oai)
    messages = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    kwargs = dict(model=m, messages=messages, tools=[WEATHER, UNITS], tool_choice="required", max_tokens=60,
                  temperature=0)
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        for c in oai.chat.completions.create(**kwargs, stream=True):
            if not c.choices:
                continue
            finish = c.choices[0].finish_reason or finish
            for tc in c.choices[0].delta.tool_calls or ():
                slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += tc.id or ""
                slot["name"] += tc.function.name or ""
                slot["arguments"] += tc.function.arguments or ""
        assert finish == "tool_calls" and len(calls) >= 1
        call = calls[0]
    else:
        r = oai.chat.completions.create(**kwargs)
        assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
        tc = r.choices[0].message.tool_calls[0]
        call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
    assert call["id"].startswith("call_") and call["name"] in ("get_weather", "convert_units")
    args = json.loads(call["arguments"])
    assert isinstance(args, dict) and set(args) >= set({"get_weather": ["city"], "convert_units": ["value", "to"]}[call["name"]])
    # the result goes back as a tool message; the model answers in text
    messages += [{"role": "assistant", "content": None, "tool_calls": [
                     {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]},
                 {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"temperature_c": 18, "sky": "sunny"})}]
    final = oai.chat.completions.create(model=m, messages=messages, tools=[WEATHER, UNITS], tool_choice="none",
                                        max_tokens=40, temperature=0)
    assert final.choices[0].message.content and final.choices[0].message.content.strip()
    assert not final.choices[0].message.tool_calls and final.choices[0].finish_reason in ("stop", "length")


def test_named_tool_choice_calls_that_function(oai):
    r = oai.chat.completions.create(model=model_id(oai), messages=[{"role": "user", "content": "Convert 20 C to F."}],
                                    tools=[WEATHER, UNITS], max_tokens=60, temperature=0,
                                    tool_choice={"type": "function", "function": {"name": "convert_units"}})
    (tc,) = r.choices[0].message.tool_calls
    assert tc.function.name == "convert_units"
    args = json.loads(tc.function.arguments)
    assert isinstance(args["value"], (int, float)) and args["to"] in ("C", "F")


def test_logprobs_streamed_equal_non_streamed_under_greedy(oai):
    kwargs = dict(model=model_id(oai), messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12,
                  temperature=0, logprobs=True, top_logprobs=3)
    # A warm-up first: the prompt's prefix is then cached for both runs compared (a cold prompt is
    # evaluated in other batch shapes, whose rounding can flip a near-tie between two tokens).
    oai.chat.completions.create(**kwargs)
    full = oai.chat.completions.create(**kwargs)
    lps = full.choices[0].logprobs.content
    assert "".join(t.token for t in lps) == full.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in lps)
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-4 for t in lps)  # greedy picks the most likely
    assert all(bytes(t.bytes) == t.token.encode() for t in lps if t.bytes)
    streamed = [t for c in oai.chat.completions.create(**kwargs, stream=True)
                if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in lps]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in lps], abs=1e-5)


def test_n_choices_in_the_batch_slots(oai, live_app):
    r = oai.chat.completions.create(model=model_id(oai), messages=[{"role": "user", "content": "Say hi."}], n=3,
                                    max_tokens=8, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert texts[0].strip() and texts.count(texts[0]) == 3  # greedy: the same answer in every slot
    assert r.usage.completion_tokens > 0 and r.usage.completion_tokens % 3 == 0  # three equal answers counted
    slots = live_app.manager.max_concurrency
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=model_id(oai), messages=[{"role": "user", "content": "hi"}], n=slots + 1)
    assert err.value.body["param"] == "n" and f"at most {slots}" in err.value.body["message"]


def test_text_completions_stream_and_not(oai):
    m = model_id(oai)
    full = oai.completions.create(model=m, prompt="The three primary colours are", max_tokens=12, temperature=0,
                                  logprobs=2)
    c = full.choices[0]
    assert c.text.strip() and c.finish_reason in ("stop", "length") and full.usage.prompt_tokens > 3
    assert "".join(c.logprobs.tokens) == c.text
    assert c.logprobs.text_offset == [sum(len(t) for t in c.logprobs.tokens[:i]) for i in range(len(c.logprobs.tokens))]
    assert all(len(top) <= 2 for top in c.logprobs.top_logprobs)
    streamed = "".join(ch.choices[0].text for ch in oai.completions.create(
        model=m, prompt="The three primary colours are", max_tokens=12, temperature=0, stream=True) if ch.choices)
    assert streamed == c.text
    two = oai.completions.create(model=m, prompt=["One, two,", "Monday, Tuesday,"], max_tokens=4, temperature=0)
    assert [ch.index for ch in two.choices] == [0, 1]
    alone = oai.completions.create(model=m, prompt="Monday, Tuesday,", max_tokens=4, temperature=0)
    assert two.choices[1].text == alone.choices[0].text


def test_embeddings(oai, live_app):
    r = oai.embeddings.create(model=model_id(oai), input=["The cat sat on the mat.", "A cat is on a mat.",
                                                          "Quarterly revenue grew 4%."])
    vecs = [d.embedding for d in r.data]
    assert len(vecs) == 3 and len({len(v) for v in vecs}) == 1 and len(vecs[0]) > 16
    assert r.usage.prompt_tokens > 10

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    raw = httpx.post(live_app.url + "/v1/embeddings", timeout=60, json={
        "model": "default", "input": "The cat sat on the mat.", "encoding_format": "base64"}).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(vecs[0], abs=1e-6)


def test_tokenize_and_detokenize(live_app):
    text = "Hello world, how are you?"
    plain = httpx.post(live_app.url + "/tokenize", json={"content": text}).json()["tokens"]
    special = httpx.post(live_app.url + "/tokenize", json={"content": text, "add_special": True}).json()["tokens"]
    assert special[-len(plain):] == plain and len(special) >= len(plain)
    pieces = httpx.post(live_app.url + "/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == plain and "".join(p["piece"] for p in pieces) == text
    assert httpx.post(live_app.url + "/detokenize", json={"tokens": plain}).json() == {"content": text}


def test_extra_samplers_are_honoured(oai):
    base = dict(model=model_id(oai), messages=[{"role": "user", "content": "List five fruits."}], max_tokens=24,
                temperature=0)
    plain = oai.chat.completions.create(**base).choices[0].message.content
    penalised = oai.chat.completions.create(**base, frequency_penalty=2.0,
                                            extra_body={"dry_multiplier": 0.8, "min_p": 0.05})
    assert penalised.choices[0].message.content != plain
