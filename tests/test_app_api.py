"""The real app on a free port, driven by a real gradio_client and by plain HTTP (curl's way)."""

from __future__ import annotations

import json

import httpx
import pytest
from gradio_client import Client

from tests.conftest import LiveServer, make_settings

GREEDY = dict(system_prompt="", max_new_tokens=24, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=0)


def chat(client: Client, message: str, history=None, **overrides):
    params = {**GREEDY, **overrides}
    return client.submit(message, history or [], *params.values(), api_name="/chat")


def test_health_reports_the_loaded_model(live_app):
    r = httpx.get(live_app.url + "/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready"
    assert body["model"]["backend"] == "llamacpp"
    assert body["model"]["quantization"] == "Q4_1"


def test_chat_streams_a_growing_reply_and_ends_with_stats(client):
    job = chat(client, "Name three colours of the rainbow.", max_new_tokens=40)
    partials = [reply for reply, _ in job]
    reply, stats = job.result()
    assert reply.strip()
    assert len(partials) >= 2, "the reply was not streamed"
    assert all(reply.startswith(p) for p in partials), "partials must grow towards the final reply"
    assert stats["completion_tokens"] > 0
    assert stats["ttft_s"] > 0
    assert stats["prompt_tokens"] > 5
    assert stats["outcome"] == "ok"


def test_history_is_used(client):
    history = [{"role": "user", "content": "My name is Zanzibar."},
               {"role": "assistant", "content": "Nice to meet you, Zanzibar!"}]
    with_history, _ = chat(client, "What is my name?", history, max_new_tokens=16).result()
    assert "Zanzibar" in with_history


def test_chat_over_rest_and_sse_like_curl(live_app):
    data = ["Say hi.", [], *GREEDY.values()]
    with httpx.Client(base_url=live_app.url, timeout=60) as http:
        r = http.post("/gradio_api/call/chat", json={"data": data})
        assert r.status_code == 200
        event_id = r.json()["event_id"]
        events = []
        with http.stream("GET", f"/gradio_api/call/chat/{event_id}") as stream:
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((kind, json.loads(line[5:])))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "complete"
    assert "generating" in kinds
    final_reply, final_stats = events[-1][1]
    assert final_reply.strip()
    assert final_stats["completion_tokens"] > 0


BAD_CHAT = [
    ("", {}, "empty"),
    ("   ", {}, "empty"),
    ("hi", {"temperature": -1}, "temperature"),
    ("hi", {"max_new_tokens": 0}, "max_new_tokens"),
    ("hi", {"max_new_tokens": 10**9}, "max_new_tokens"),
    ("hi", {"top_p": 0}, "top_p"),
    ("hi", {"top_p": 1.5}, "top_p"),
    ("hi", {"top_k": -3}, "top_k"),
    ("hi", {"repetition_penalty": 0}, "repetition_penalty"),
    ("word " * 4000, {}, "context"),
]


@pytest.mark.parametrize("message,overrides,needle", BAD_CHAT, ids=[b[2] + str(i) for i, b in enumerate(BAD_CHAT)])
def test_bad_chat_input_is_a_clear_error_and_the_server_keeps_serving(client, live_app, message, overrides, needle):
    with pytest.raises(Exception) as err:
        chat(client, message, **overrides).result()
    text = str(err.value)
    assert needle in text.lower() or needle in text, text
    assert "Traceback" not in text
    assert httpx.get(live_app.url + "/health").status_code == 200
    reply, stats = chat(client, "Say hello.", max_new_tokens=8).result()
    assert reply.strip() and stats["completion_tokens"] > 0


BAD_LOADS = [
    ("/no/such/model.gguf", "llamacpp", "as file", "does not exist"),
    ("JUNK", "llamacpp", "as file", "not a GGUF"),
    ("JUNK", "transformers", "fp32", "not a model"),
    ("embedded", "llamacpp", "Q9_9", "Unknown quantization"),
    ("embedded", "transformers", "int3", "Unknown quantization"),
    ("embedded", "tensorflow", "fp32", "Unknown backend"),
    ("", "llamacpp", "as file", "No model given"),
]


@pytest.mark.parametrize("model,backend,quant,needle", BAD_LOADS, ids=[b[3] for b in BAD_LOADS])
def test_bad_load_keeps_the_previous_model_serving(client, live_app, tmp_path, model, backend, quant, needle):
    if model == "JUNK":
        junk = tmp_path / "notes.txt"
        junk.write_text("not a model at all\n" * 20)
        model = str(junk)
    before = httpx.get(live_app.url + "/health").json()["model"]
    with pytest.raises(Exception, match=needle):
        client.predict(model, backend, quant, api_name="/load_model")
    after = httpx.get(live_app.url + "/health").json()["model"]
    assert after == before
    reply, _ = chat(client, "Say hello.", max_new_tokens=8).result()
    assert reply.strip()


def test_load_unload_and_switch_quantization_through_the_api(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir)) as srv:
        c = Client(srv.url, verbose=False)
        try:
            assert httpx.get(srv.url + "/health").status_code == 503
            with pytest.raises(Exception, match="No model is loaded"):
                chat(c, "hi").result()
            job = c.submit("embedded", "llamacpp", "as file", api_name="/load_model")
            lines = list(job)
            assert "Loaded" in job.result()
            assert len(lines) >= 2, "load progress was not streamed"
            assert httpx.get(srv.url + "/health").json()["model"]["quantization"] == "Q4_1"
            first, _ = chat(c, "Say hello.", max_new_tokens=8).result()
            assert first.strip()
            assert "Loaded" in c.predict("embedded", "llamacpp", "Q8_0", api_name="/load_model")
            assert httpx.get(srv.url + "/health").json()["model"]["quantization"] == "Q8_0"
            assert chat(c, "Say hello.", max_new_tokens=8).result()[0].strip()
            assert "Unloaded" in c.predict(api_name="/unload_model")
            r = httpx.get(srv.url + "/health")
            assert r.status_code == 503 and r.json()["status"] == "empty"
            live = httpx.get(srv.url + "/live")  # liveness does not depend on a model
            assert live.status_code == 200 and live.json()["model_state"] == "empty"
        finally:
            c.close()


def test_cancelling_a_job_stops_generation(client, live_app):
    import time

    job = client.submit("Count from 1 to 300, separated by commas.", [], "", 1500, 0.0, 1.0, 0, 1.0, 0,
                        api_name="/chat")
    deadline = time.time() + 30
    while time.time() < deadline and not job.outputs():
        time.sleep(0.02)
    t0 = time.time()
    job.cancel()
    manager = live_app.manager
    while manager.metrics.running and time.time() - t0 < 5:
        time.sleep(0.01)
    took = time.time() - t0
    print(f"\ngradio_client cancel -> generation stopped: {took * 1000:.0f} ms")
    assert manager.metrics.running == 0
    assert took < 1.5
    last = manager.metrics.recent(1)[-1]
    assert last.outcome == "cancelled"
    assert last.completion_tokens < 1500


@pytest.mark.parametrize("parallel", [0, 65])
def test_bad_parallel_is_refused_before_loading_and_the_model_keeps_serving(client, live_app, parallel):
    from backends.base import ModelSpec
    from backends.errors import InvalidRequest

    before = httpx.get(live_app.url + "/health").json()["model"]
    for backend in ("llamacpp", "transformers"):
        with pytest.raises(InvalidRequest, match="parallel must be between 1 and 64"):
            live_app.manager.load(ModelSpec(source="embedded", backend=backend, parallel=parallel))
    assert httpx.get(live_app.url + "/health").json()["model"] == before
    reply, _ = chat(client, "Say hello.", max_new_tokens=8).result()
    assert reply.strip()
