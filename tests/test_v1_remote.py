"""The remote backend passes the /v1 features through to a real OpenAI-compatible engine
(llama-cpp-python's server serving the embedded model): raw prompts via /v1/completions, logprobs,
JSON mode and the extra samplers; what it cannot pass on is refused by name."""

from __future__ import annotations

import json
import threading

import openai
import pytest

from backends.base import ChatRequest, Constraint, Message, SamplingParams
from backends.errors import InvalidRequest
from backends.remote import RemoteBackend
from tests.test_remote_backend import spec


@pytest.fixture(scope="module")
def remote(engine):
    b = RemoteBackend()
    b.load(spec(engine))
    yield b
    b.unload()


def raw(engine) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine, api_key="engine-secret", max_retries=0)


def greedy_params(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.0, top_p=1.0, top_k=0, **kw)


def test_raw_prompt_goes_through_completions_with_its_logprobs(remote, engine):
    request = ChatRequest((), greedy_params(8), prompt="The capital of France is", logprobs=2)
    deltas = list(remote.stream(request, threading.Event()))
    text = "".join(d.text for d in deltas)
    direct = raw(engine).completions.create(model="smollm2-remote", prompt="The capital of France is", max_tokens=8,
                                            temperature=0, logprobs=2)
    assert text == direct.choices[0].text and text.strip()
    lps = [lp for d in deltas for lp in d.logprobs]
    assert [lp.token for lp in lps] == direct.choices[0].logprobs.tokens
    assert [lp.logprob for lp in lps] == pytest.approx(direct.choices[0].logprobs.token_logprobs, abs=1e-4)
    assert all(len(lp.top) == 2 for lp in lps)


def test_json_mode_reaches_the_engine(remote):
    request = ChatRequest((Message("user", "Give a JSON object with a name and an age."),), greedy_params(40),
                          constraint=Constraint("json_object"))
    deltas = list(remote.stream(request, threading.Event()))
    text = "".join(d.text for d in deltas)
    if deltas[-1].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens: still a JSON object's start
        assert text.lstrip().startswith("{")


def test_samplers_are_sent_and_unknown_ones_refused(remote):
    path, body = remote.request_body(ChatRequest((Message("user", "hi"),), SamplingParams(
        min_p=0.1, presence_penalty=0.4, mirostat=2, mirostat_tau=4.0), logprobs=3,
        tools=({"type": "function", "function": {"name": "f"}},)))
    assert path == "/chat/completions"
    assert (body["min_p"], body["presence_penalty"], body["mirostat_mode"], body["mirostat_tau"]) == (0.1, 0.4, 2, 4.0)
    assert body["logprobs"] is True and body["top_logprobs"] == 3 and body["tools"][0]["function"]["name"] == "f"



def test_a_penalty_reaches_the_engine(remote, engine):
    msg = "Repeat the word cat ten times."
    request = ChatRequest((Message("user", msg),), greedy_params(12, presence_penalty=1.5))
    text = "".join(d.text for d in remote.stream(request, threading.Event()))
    direct = raw(engine).chat.completions.create(model="smollm2-remote", messages=[{"role": "user", "content": msg}],
                                                 max_tokens=12, temperature=0, top_p=1.0, presence_penalty=1.5)
    assert text == direct.choices[0].message.content
    plain = ChatRequest((Message("user", msg),), greedy_params(12))
    assert "".join(d.text for d in remote.stream(plain, threading.Event())) != text  # the penalty did something


def test_unsupported_samplers_and_grammars_are_refused_by_name():
    with pytest.raises(InvalidRequest) as err:
        RemoteBackend.check_request(ChatRequest((Message("user", "hi"),), SamplingParams(dry_multiplier=0.8)))
    assert err.value.param == "dry_multiplier"
    with pytest.raises(InvalidRequest) as err:
        RemoteBackend.check_request(ChatRequest((Message("user", "hi"),), constraint=Constraint("grammar", "root ::= \"a\"")))
    assert err.value.param == "response_format"
