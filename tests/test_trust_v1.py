"""What a /v1 client relies on being exactly right, through the real `openai` client against the real app
serving the embedded model, on each backend that claims the feature:

- ``finish_reason`` is exactly ``length`` when ``max_tokens`` cut the reply (and ``usage.completion_tokens``
  is then ``max_tokens``), exactly ``stop`` when the model ended it or a stop string hit; chat and text
  completions, streamed and not;
- log probabilities are log probabilities (every one <= 0, the alternatives most likely first, their
  probabilities summing to at most 1) and, under greedy decoding, the top alternative is the chosen token
  with the chosen token's logprob;
- ``response_format`` on /v1/completions gives output valid against the schema;
- ``parallel_tool_calls: false`` with a required call gives exactly one call.
"""

from __future__ import annotations

import json
import math

import openai
import pytest

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.slow

BACKENDS = ["llamacpp", "transformers"]


@pytest.fixture(scope="module")
def hf_app(cache_dir):
    """The app serving the embedded model through transformers (a checkpoint derived from the GGUF)."""
    with LiveServer(make_settings(cache_dir=cache_dir, request_log="")) as srv:
        try:
            srv.manager.load(ModelSpec(source="embedded", backend="transformers", quantization="fp32", parallel=1))
            yield srv
        finally:
            srv.manager.close()


@pytest.fixture(scope="module", params=BACKENDS)
def oai(request):
    """An `openai` client on the app serving the embedded model with this backend (llama.cpp: the shared
    session server)."""
    srv = request.getfixturevalue("live_app" if request.param == "llamacpp" else "hf_app")
    # generous: on a loaded 2-core machine a reply can take minutes (idle: a second)
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    yield c
    c.close()


def ask(oai, endpoint: str, prompt: str, stream: bool, **kwargs) -> tuple[str, str, int]:
    """(text, finish_reason, usage.completion_tokens) of one greedy choice, streamed or not."""
    kwargs = {"model": "default", "temperature": 0, **kwargs}
    if endpoint == "chat":
        create = oai.chat.completions.create
        kwargs["messages"] = [{"role": "user", "content": prompt}]
    else:
        create = oai.completions.create
        kwargs["prompt"] = prompt
    if not stream:
        r = create(**kwargs)
        c = r.choices[0]
        return (c.message.content if endpoint == "chat" else c.text), c.finish_reason, r.usage.completion_tokens
    text, finishes, usage = [], [], None
    for chunk in create(**kwargs, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for c in chunk.choices:
            text.append((c.delta.content or "") if endpoint == "chat" else c.text)
            if c.finish_reason:
                finishes.append(c.finish_reason)
    assert len(finishes) == 1, f"one finish_reason per streamed choice, got {finishes}"
    assert usage is not None, "include_usage asked for a usage chunk"
    return "".join(text), finishes[0], usage


# Prompts whose greedy reply runs long (so a small max_tokens cuts it) / ends on its own well before 64
# tokens; for text completions the ending one is a chat-formatted prompt, whose reply ends with the
# end-of-turn token.
LONG = {"chat": "Write a long story about a dragon who learns to cook.",
        "completions": "Once upon a time, in a land far away, there lived"}
ENDS = {"chat": "Say hi.",
        "completions": "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"}
CASES = [(e, s) for e in ("chat", "completions") for s in (False, True)]
IDS = [f"{e}-{'streamed' if s else 'whole'}" for e, s in CASES]


@pytest.mark.parametrize("endpoint,stream", CASES, ids=IDS)
def test_a_reply_cut_by_max_tokens_finishes_with_length(oai, endpoint, stream):
    text, finish, completion_tokens = ask(oai, endpoint, LONG[endpoint], stream, max_tokens=7)
    assert text.strip()
    assert finish == "length", f"max_tokens cut {text!r}, yet finish_reason is {finish!r}"
    assert completion_tokens == 7


@pytest.mark.parametrize("endpoint,stream", CASES, ids=IDS)
def test_a_reply_the_model_ended_finishes_with_stop(oai, endpoint, stream):
    text, finish, completion_tokens = ask(oai, endpoint, ENDS[endpoint], stream, max_tokens=64)
    assert text.strip() and completion_tokens < 64, f"the model did not end its reply: {text!r}"
    assert finish == "stop"


@pytest.mark.parametrize("endpoint,stream", CASES, ids=IDS)
def test_a_reply_cut_by_a_stop_string_finishes_with_stop(oai, endpoint, stream):
    full, finish, _ = ask(oai, endpoint, LONG[endpoint], False, max_tokens=24)
    assert finish == "length"
    word = full.split()[4]  # a word well inside the reply
    text, finish, completion_tokens = ask(oai, endpoint, LONG[endpoint], stream, max_tokens=24, stop=[word])
    assert text == full[: full.index(word)]
    assert finish == "stop", f"a stop string ended {text!r}, yet finish_reason is {finish!r}"
    assert completion_tokens < 24


# --- log probabilities -------------------------------------------------------------------------------

TOP = 5


def check_logprobs(chosen: list[tuple[str, float]], tops: list[list[tuple[str, float]]], greedy: bool) -> None:
    """``chosen``: each generated token and its logprob; ``tops``: each step's alternatives, in the order
    the server listed them."""
    assert chosen and len(tops) == len(chosen)
    for (token, lp), top in zip(chosen, tops):
        assert lp <= 0.0, f"{token!r}: logprob {lp} > 0 (a probability?)"
        assert 1 <= len(top) <= TOP
        values = [v for _, v in top]
        assert all(v <= 0.0 for v in values), f"{token!r}: top_logprobs {values} are not all <= 0"
        assert values == sorted(values, reverse=True), f"{token!r}: top_logprobs not most likely first: {values}"
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-4, f"{token!r}: alternatives' probabilities sum past 1"
        assert lp <= values[0] + 1e-4, f"{token!r}: the chosen token ({lp}) beats the top alternative ({values[0]})"
        if greedy:
            assert top[0][0] == token, f"greedy chose {token!r} but the most likely token is {top[0][0]!r}"
            assert values[0] == pytest.approx(lp, abs=1e-4)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_chat_logprobs_are_log_probabilities_and_greedy_picks_the_top_one(oai, stream, temperature):
    kwargs = dict(model="default", messages=[{"role": "user", "content": "Name three colours of the rainbow."}],
                  max_tokens=12, temperature=temperature, seed=3, logprobs=True, top_logprobs=TOP)
    if stream:
        content = [t for c in oai.chat.completions.create(**kwargs, stream=True)
                   if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    else:
        content = oai.chat.completions.create(**kwargs).choices[0].logprobs.content
    check_logprobs([(t.token, t.logprob) for t in content],
                   [[(a.token, a.logprob) for a in t.top_logprobs] for t in content], greedy=temperature == 0)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_completion_logprobs_are_log_probabilities_and_greedy_picks_the_top_one(oai, stream, temperature):
    kwargs = dict(model="default", prompt="The three primary colours are", max_tokens=12,
                  temperature=temperature, seed=3, logprobs=TOP)
    parts = ([c.choices[0].logprobs for c in oai.completions.create(**kwargs, stream=True)
              if c.choices and c.choices[0].logprobs] if stream
             else [oai.completions.create(**kwargs).choices[0].logprobs])
    tokens = [t for p in parts for t in p.tokens]
    values = [v for p in parts for v in p.token_logprobs]
    tops = [list(top.items()) for p in parts for top in p.top_logprobs]
    check_logprobs(list(zip(tokens, values)), tops, greedy=temperature == 0)


# --- structured output on text completions --------------------------------------------------------------

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "colour"],
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 20},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "colour": {"enum": ["red", "green", "blue"]}}}


def schema_errors(value, schema: dict) -> list[str]:
    """What is wrong with ``value`` against ``schema`` (jsonschema when installed, else PERSON checked
    by hand)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema comes with the dev requirements
        jsonschema = None
    if jsonschema is not None:
        return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(value)]
    assert schema is PERSON
    if not isinstance(value, dict) or set(value) != {"name", "age", "colour"}:
        return [f"not an object with exactly name, age, colour: {value!r}"]
    errors = []
    if not isinstance(value["name"], str) or not 1 <= len(value["name"]) <= 20:
        errors.append("name")
    if not isinstance(value["age"], int) or isinstance(value["age"], bool) or not 0 <= value["age"] <= 120:
        errors.append("age")
    if value["colour"] not in ("red", "green", "blue"):
        errors.append("colour")
    return errors


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("fmt", ["json_schema", "json_object+schema"])
def test_completions_honour_a_json_schema_response_format(oai, stream, fmt):
    response_format = ({"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
                       if fmt == "json_schema" else {"type": "json_object", "schema": PERSON})
    text, finish, _ = ask(oai, "completions", "Here is a person:", stream, max_tokens=80,
                          extra_body={"response_format": response_format})
    assert finish == "stop", f"the schema's object should be complete well within 80 tokens: {text!r}"
    try:
        value = json.loads(text)
    except ValueError:
        pytest.fail(f"response_format was not honoured: {text!r} is not JSON")
    assert not schema_errors(value, PERSON), (text, schema_errors(value, PERSON))


# --- parallel tool calls ------------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris and in Tokyo?"}]


def tool_calls(oai, stream: bool, **kwargs) -> tuple[list[dict], str]:
    """(the calls as {"id", "name", "arguments"}, finish_reason) of one greedy chat reply."""
    kwargs = dict(model="default", messages=ASK, tools=[WEATHER], max_tokens=80, temperature=0, **kwargs)
    if not stream:
        c = oai.chat.completions.create(**kwargs).choices[0]
        return ([{"id": t.id, "name": t.function.name, "arguments": t.function.arguments}
                 for t in c.message.tool_calls or ()], c.finish_reason)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in oai.chat.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for tc in c.delta.tool_calls or ():
                slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += tc.id or ""
                slot["name"] += tc.function.name or ""
                slot["arguments"] += tc.function.arguments or ""
    return [calls[i] for i in sorted(calls)], finish


# One call where the model wrote two: tests/test_tools_with_format.py (a scripted engine writes the two;
# a response format no longer holds the embedded model to them, since tools on auto with a format allow
# a single call too).


def test_parallel_tool_calls_false_with_a_required_call_returns_exactly_one(oai):
    calls, finish = tool_calls(oai, False, tool_choice="required", parallel_tool_calls=False)
    assert finish == "tool_calls" and len(calls) == 1
    assert calls[0]["name"] == "get_weather" and isinstance(json.loads(calls[0]["arguments"])["city"], str)
