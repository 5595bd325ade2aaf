"""The streaming invariants through the app's own paths (Gradio /chat and /v1), on each serving
configuration: llama.cpp with one slot, llama.cpp with the default slots and prefix reuse (the
shared ``live_app``), and transformers with the default slots (continuous batching).

- streamed == non-streamed greedy text, and Gradio's final reply is the same text;
- a stop string cuts the reply right before it, finish_reason "stop";
- Gradio's cancel and a /v1 client that disconnects stop the generation and free the slot.
"""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest
from gradio_client import Client

from backends.base import ModelSpec
from tests.conftest import LiveServer, engine_threads, make_settings

MSG = [{"role": "user", "content": "Name three colours of the rainbow."}]
COUNT = [{"role": "user", "content": "Count from 1 to 300, separated by commas."}]
CONFIGS = ["llamacpp-1", "llamacpp-default", "transformers-default"]


@pytest.fixture(scope="module", params=CONFIGS)
def app(request, cache_dir):
    if request.param == "llamacpp-default":
        yield request.getfixturevalue("live_app")
        return
    backend, slots = request.param.split("-")
    if backend == "transformers":
        pytest.importorskip("torch")
    settings = make_settings(cache_dir=cache_dir, request_log="")
    spec = ModelSpec.from_settings(settings, source="embedded", backend=backend,
                                   quantization="fp32" if backend == "transformers" else None,
                                   **({"parallel": 1} if slots == "1" else {}))
    with LiveServer(settings) as srv:
        srv.manager.load(spec)
        yield srv
    # the server's shutdown frees its model, and with it the engine's threads: a transformers batch
    # thread left running (it is no daemon) kept `python app.py` from exiting after SIGTERM
    assert srv.manager.current is None
    assert engine_threads() == []


@pytest.fixture(scope="module")
def oai(app):
    c = openai.OpenAI(base_url=app.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()


@pytest.fixture(scope="module")
def gradio(app):
    c = Client(app.url, verbose=False)
    yield c
    c.close()


def wait_until_idle(manager, timeout: float = 2.0) -> float:
    t0 = time.perf_counter()
    while (manager.metrics.running or manager.metrics.waiting) and time.perf_counter() - t0 < timeout:
        time.sleep(0.005)
    return time.perf_counter() - t0


def test_stream_equals_non_stream_on_v1_and_gradio(app, oai, gradio):
    full = oai.chat.completions.create(model="default", messages=MSG, max_tokens=32, temperature=0)
    text = full.choices[0].message.content
    assert text.strip()
    chunks = list(oai.chat.completions.create(model="default", messages=MSG, max_tokens=32, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    reply, stats = gradio.predict(MSG[0]["content"], [], "", 32, 0.0, 1.0, 0, 1.0, 0, api_name="/chat")
    assert reply == text
    assert stats["completion_tokens"] == full.usage.completion_tokens


def test_stop_string_cuts_before_it_on_both_paths(app, oai):
    base = oai.chat.completions.create(model="default", messages=COUNT, max_tokens=40, temperature=0)
    text = base.choices[0].message.content
    stop = text.strip()[8:12]
    assert stop.strip(), text
    cut = oai.chat.completions.create(model="default", messages=COUNT, max_tokens=40, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    chunks = list(oai.chat.completions.create(model="default", messages=COUNT, max_tokens=40, temperature=0,
                                              stop=[stop], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text[:text.index(stop)]


def test_gradio_cancel_frees_the_slot(app, gradio):
    wait_until_idle(app.manager, 10)
    job = gradio.submit(COUNT[0]["content"], [], "", 1500, 0.0, 1.0, 0, 1.0, 0, api_name="/chat")
    deadline = time.time() + 60
    while app.manager.metrics.running == 0 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    job.cancel()
    wait_until_idle(app.manager, 60)  # no wall-clock bound: on a loaded CPU one token can take a while
    assert app.manager.metrics.running == 0, "still generating after cancel"
    last = app.manager.metrics.recent(1)[-1]
    assert last.outcome == "cancelled" and 0 < last.completion_tokens < 1500


def test_a_cancel_during_the_first_step_stops_the_reply(app, gradio):
    """A cancel that lands while Gradio runs the handler's first step (prefill and first token: long
    here, as it is for any prompt on a contended CPU) ends the reply too, instead of leaving it
    generating for nobody until the garbage collector finds it (ui/gradio_cancel.py)."""
    wait_until_idle(app.manager, 10)
    words = " ".join(f"w{i}{uuid.uuid4().hex[:3]}" for i in range(150))  # never in the prompt cache
    job = gradio.submit(f"Repeat these words: {words}", [], "", 600, 0.0, 1.0, 0, 1.0, 0, api_name="/chat")
    deadline = time.time() + 60
    while app.manager.metrics.running == 0 and time.time() < deadline:
        time.sleep(0.002)
    job.cancel()  # during prefill: Gradio holds no iterator for the event yet
    wait_until_idle(app.manager, 60)
    assert app.manager.metrics.running == 0, "still generating after a cancel during the first step"
    last = app.manager.metrics.recent(1)[-1]
    assert last.outcome == "cancelled" and last.completion_tokens < 100


def test_v1_disconnect_frees_the_slot(app):
    wait_until_idle(app.manager, 10)
    body = {"model": "default", "messages": COUNT, "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", app.url + "/v1/chat/completions", json=body) as r:
            got = 0
            for line in r.iter_lines():
                got += line.startswith("data:")
                if got == 5:
                    break
            assert app.manager.metrics.running == 1
    wait_until_idle(app.manager, 60)
    assert app.manager.metrics.running == 0
    last = app.manager.metrics.recent(1)[-1]
    assert last.outcome == "cancelled" and last.completion_tokens < 1500
