"""The Backend contract, checked the same way on every backend: the scripted fake, llama.cpp and
transformers (one slot and the batched engines with 4 slots, what the app serves by default), and
the remote backend in front of a real engine.

- finish reasons: "length" at the budget, "cancelled" after cancel, the prompt size on the last delta;
- cancel stops within one token;
- a prompt longer than the context is ContextLengthExceeded before any token;
- stop strings (applied once, in the ModelManager) cut the text right before the stop;
- streamed text == the engine's own non-streamed greedy answer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import pytest

from backends.base import Backend, ChatRequest, Message, ModelSpec, SamplingParams
from backends.errors import BackendError, ContextLengthExceeded
from tests.conftest import long_request, make_manager
from tests.fakes import FakeScript, fake_registry

N_CTX = 512
COUNT = "Count from 1 to 300, separated by commas."
RAINBOW = "Name three colours of the rainbow."


def greedy(text: str, n: int) -> ChatRequest:
    return ChatRequest((Message("user", text),), SamplingParams(max_new_tokens=n, temperature=0.0, top_p=1.0, top_k=0))


@dataclass
class Subject:
    backend: Backend
    reference: Callable[[ChatRequest], str]  # the engine's own non-streamed greedy text
    manager: object  # a ModelManager serving this same model (for stop strings)


def _fake_subject() -> Subject:
    pieces = [f"{i}, " for i in range(1, 301)]
    script = FakeScript()
    script.enqueue(*[list(pieces) for _ in range(64)])
    registry = fake_registry(script)
    backend = registry.get("fake")()
    backend.load(ModelSpec(source="fake", backend="fake", n_ctx=N_CTX))
    manager = make_manager(registry=registry)
    manager.load(ModelSpec(source="fake", backend="fake", n_ctx=N_CTX))
    return Subject(backend, lambda req: "".join(pieces[:req.params.max_new_tokens]), manager)


def _llamacpp_reference(plain) -> Callable[[ChatRequest], str]:
    def ref(req: ChatRequest) -> str:
        out = plain._llm.create_completion(plain.prompt_tokens(req), max_tokens=req.params.max_new_tokens,
                                           temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
        return out["choices"][0]["text"]
    return ref


def _transformers_reference(plain) -> Callable[[ChatRequest], str]:
    import torch

    def ref(req: ChatRequest) -> str:
        ids = plain.prompt_ids(req)
        with torch.inference_mode():
            out = plain._model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                                        max_new_tokens=req.params.max_new_tokens, do_sample=False)
        return plain._tok.decode(out[0, len(ids):], skip_special_tokens=True)
    return ref


def _local(cache_dir, backend: str, quant: str, parallel: int, request) -> Subject:
    from backends.registry import default_registry

    spec = ModelSpec(source="embedded", backend=backend, quantization=quant, n_ctx=N_CTX, parallel=parallel,
                     prefix_cache=False)
    cls = default_registry().get(backend)
    b = cls(cache_dir)
    b.load(spec)
    plain = b if parallel == 1 else cls(cache_dir)
    if plain is not b:
        plain.load(spec.with_(parallel=1))
    manager = make_manager(cache_dir=cache_dir)
    manager.load(spec)

    def close():
        b.unload()
        plain.unload()
        manager.unload()

    request.addfinalizer(close)
    reference = _llamacpp_reference(plain) if backend == "llamacpp" else _transformers_reference(plain)
    return Subject(b, reference, manager)


def _remote(engine) -> Subject:
    import openai

    spec = ModelSpec(source="smollm2-remote", backend="remote", api_base=engine, api_key="engine-secret", n_ctx=N_CTX)
    from backends.remote import RemoteBackend

    b = RemoteBackend()
    b.load(spec)
    manager = make_manager()
    manager.load(spec)
    client = openai.OpenAI(base_url=engine, api_key="engine-secret")

    def ref(req: ChatRequest) -> str:
        out = client.chat.completions.create(model="smollm2-remote", messages=[{"role": "user", "content": req.messages[0].content}],
                                             max_tokens=req.params.max_new_tokens, temperature=0, top_p=1.0)
        return out.choices[0].message.content

    return Subject(b, ref, manager)


SUBJECTS = ["fake"] + [pytest.param(name, marks=pytest.mark.slow)
                        for name in ("llamacpp-1", "llamacpp-4", "transformers-1", "transformers-4", "remote")]


@pytest.fixture(scope="module", params=SUBJECTS)
def subject(request):
    name = request.param
    if name == "fake":
        return _fake_subject()
    if name == "remote":
        return _remote(request.getfixturevalue("engine"))
    backend, parallel = name.split("-")
    if backend == "transformers":
        pytest.importorskip("torch")
    quant = "fp32" if backend == "transformers" else None
    return _local(request.getfixturevalue("cache_dir"), backend, quant, int(parallel), request)


def deltas_of(backend: Backend, req: ChatRequest, cancel: threading.Event | None = None):
    return list(backend.stream(req, cancel or threading.Event()))


def test_budget_ends_with_length_and_the_prompt_size(subject):
    deltas = deltas_of(subject.backend, greedy(COUNT, 6))
    assert sum(d.tokens for d in deltas) == 6
    assert deltas[-1].finish_reason == "length"
    assert all(d.finish_reason is None for d in deltas[:-1])
    if subject.backend.name != "remote":  # llama-cpp-python's server sends no usage in streams
        assert deltas[-1].prompt_tokens > 5


def test_cancel_stops_within_one_token(subject):
    cancel = threading.Event()
    stream = subject.backend.stream(long_request(), cancel)
    tokens = 0
    for d in stream:
        tokens += d.tokens
        if tokens >= 3:
            break
    cancel.set()
    rest = list(stream)
    assert sum(d.tokens for d in rest) <= 1, "more than one token after cancel"
    assert rest and rest[-1].finish_reason == "cancelled"


def test_a_prompt_longer_than_the_context_is_refused_before_any_token(subject):
    too_long = greedy("word " * 5000, 8)  # longer than every context here (the remote engine has 2048)
    stream = subject.backend.stream(too_long, threading.Event())
    # A remote engine that does not report its context (llama-cpp-python's server) can only be told
    # by its refusal: a clear BackendError, never a silent empty "stop".
    expected = BackendError if subject.backend.name == "remote" else ContextLengthExceeded
    with pytest.raises(expected):
        for d in stream:
            assert d.tokens == 0, "generated before refusing"


def test_streamed_text_equals_the_engines_non_streamed_answer(subject):
    req = greedy(RAINBOW, 32)
    text = "".join(d.text for d in deltas_of(subject.backend, req))
    assert text.strip()
    assert text == subject.reference(req)


def test_stop_strings_cut_right_before_the_stop(subject):
    req = greedy(COUNT, 40)
    full, _ = subject.manager.generate(req)
    stop = full.strip()[8:12]
    assert stop.strip(), full
    cut = full.index(stop)
    gen = subject.manager.stream(ChatRequest(req.messages, req.params, (stop,)), threading.Event())
    deltas = list(gen)
    assert "".join(d.text for d in deltas) == full[:cut]
    assert deltas[-1].finish_reason == "stop" and gen.stats.finish_reason == "stop"
