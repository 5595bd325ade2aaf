"""The real `openai` client against the app's /v1 (same port as the UI)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import LiveServer, make_settings


@pytest.fixture(scope="module")
def oai(live_app):
    c = openai.OpenAI(base_url=live_app.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield c
    c.close()


def wait_idle(manager, timeout: float = 5.0) -> None:
    import time

    end = time.time() + timeout
    while (manager.metrics.running or manager.metrics.waiting) and time.time() < end:
        time.sleep(0.01)


def model_id(oai) -> str:
    return oai.models.list().data[0].id


MSG = [{"role": "user", "content": "Name three colours of the rainbow."}]


def test_models_lists_the_loaded_model(oai, live_app):
    models = oai.models.list().data
    assert len(models) == 1
    assert models[0].id == live_app.manager.current.name


def test_non_stream_and_stream_agree_under_greedy(oai):
    m = model_id(oai)
    full = oai.chat.completions.create(model=m, messages=MSG, max_tokens=32, temperature=0, seed=0)
    text = full.choices[0].message.content
    assert text.strip()
    assert full.usage.completion_tokens > 0 and full.usage.prompt_tokens > 5
    assert full.choices[0].finish_reason in ("stop", "length")
    chunks = list(oai.chat.completions.create(model=m, messages=MSG, max_tokens=32, temperature=0, seed=0,
                                              stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2, "not streamed"
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]


def test_system_prompt_and_stop_sequences(oai):
    m = model_id(oai)
    base = oai.chat.completions.create(model=m, messages=MSG, max_tokens=40, temperature=0).choices[0].message.content
    words = base.split()
    assert len(words) > 3
    stop = words[2]
    cut = oai.chat.completions.create(model=m, messages=MSG, max_tokens=40, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == base[: base.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in oai.chat.completions.create(
        model=m, messages=MSG, max_tokens=40, temperature=0, stop=[stop], stream=True) if c.choices)
    assert streamed == base[: base.index(stop)]


def test_requests_are_counted_like_gradio_ones(oai, live_app):
    wait_idle(live_app.manager)  # a request cut short by a stop string may still be winding down
    before = live_app.manager.metrics.total
    oai.chat.completions.create(model=model_id(oai), messages=MSG, max_tokens=4, temperature=0)
    last = live_app.manager.metrics.recent(1)[-1]
    assert live_app.manager.metrics.total == before + 1
    assert last.endpoint == "v1" and last.completion_tokens > 0


BAD = [
    ({"temperature": -1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 10**9}, 400, "max_new_tokens"),
    ({"n": 5}, 400, "n"),  # above the model's 4 batch slots
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "word " * 4000}]}, 400, "context"),
    ({"model": "gpt-17"}, 404, "gpt-17"),
]


@pytest.mark.parametrize("overrides,status,needle", BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_requests_get_openai_errors_with_4xx(oai, live_app, overrides, status, needle):
    args = {"model": model_id(oai), "messages": MSG, "max_tokens": 8, **overrides}
    with pytest.raises(openai.APIStatusError) as err:
        oai.chat.completions.create(**args)
    assert err.value.status_code == status
    body = err.value.response.json()["error"]
    assert needle in body["message"] or needle == body.get("param"), body
    assert body["type"]
    # and the server still serves
    ok = oai.chat.completions.create(model=model_id(oai), messages=MSG, max_tokens=4, temperature=0)
    assert ok.choices[0].message.content


def test_malformed_json_and_missing_fields_are_400(live_app):
    r = httpx.post(live_app.url + "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(live_app.url + "/v1/chat/completions", json={"messages": MSG})
    assert r.status_code == 400 and "model" in r.json()["error"]["message"]
    r = httpx.get(live_app.url + "/v1/nope")
    assert r.status_code == 404 and "error" in r.json()


def test_no_model_loaded_is_503(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir)) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        assert c.models.list().data == []
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="default", messages=MSG)
        assert err.value.status_code == 503
        assert "No model" in err.value.response.json()["error"]["message"]


def test_client_disconnect_mid_stream_stops_generation(live_app):
    import time

    wait_idle(live_app.manager)
    body = {"model": "default", "messages": [{"role": "user", "content": "Count from 1 to 300, separated by commas."}],
            "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", live_app.url + "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data:"):
                    got += 1
                if got == 5:
                    break
            assert live_app.manager.metrics.running == 1
            t0 = time.perf_counter()
        # leaving the block closes the connection mid-stream
    while live_app.manager.metrics.running and time.perf_counter() - t0 < 5:
        time.sleep(0.005)
    took = time.perf_counter() - t0
    print(f"\n/v1 SSE disconnect -> generation stopped: {took * 1000:.0f} ms")
    assert live_app.manager.metrics.running == 0
    assert took < 1.0
    last = live_app.manager.metrics.recent(1)[-1]
    assert last.outcome == "cancelled" and last.completion_tokens < 1500
