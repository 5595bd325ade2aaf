"""Auth, API keys and rate limits against every entry point of the real app."""

from __future__ import annotations

import time
from types import SimpleNamespace

import httpx
import openai
import pytest
from gradio_client import Client

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings

MSG = [{"role": "user", "content": "Hi"}]
CHAT = ("Say hi.", [], "", 4, 0.0, 1.0, 0, 1.0, 0)
ENDPOINTS = ["load_model", "unload_model", "chat", "complete", "model_status", "stats", "cached_models", "delete_cached",
             "compare", "evaluate", "convert_to_gguf", "token_divergence", "arena_round", "arena_vote", "arena_results",
             "imatrix", "imatrix_gain", "fit", "report"]


@pytest.fixture(scope="module")
def locked(cache_dir):
    settings = make_settings(cache_dir=cache_dir, auth="alice:wonderland", api_key="sk-test-123")
    with LiveServer(settings) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512))
        yield srv


def test_health_stays_open(locked):
    assert httpx.get(locked.url + "/health").status_code == 200


def test_v1_needs_the_key(locked):
    bad = openai.OpenAI(base_url=locked.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="default", messages=MSG, max_tokens=2)
    r = httpx.post(locked.url + "/v1/chat/completions", json={"model": "default", "messages": MSG})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    good = openai.OpenAI(base_url=locked.url + "/v1", api_key="sk-test-123", max_retries=0)
    assert good.chat.completions.create(model="default", messages=MSG, max_tokens=2).choices[0].message.content is not None
    basic = httpx.get(locked.url + "/v1/models", auth=("alice", "wonderland"))
    assert basic.status_code == 200


def test_gradio_api_and_ui_need_a_login(locked):
    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(locked.url, verbose=False)  # the app's config is behind the login
    for endpoint in ENDPOINTS:  # every Gradio API endpoint, over plain REST, without credentials
        r = httpx.post(locked.url + f"/gradio_api/call/{endpoint}", json={"data": []})
        assert r.status_code == 401, endpoint
        assert r.json()["detail"]["error"] == "Not authenticated", endpoint
    for path, method in (("/v1/models", "GET"), ("/v1/chat/completions", "POST")):
        r = httpx.request(method, locked.url + path, json={"model": "default", "messages": MSG})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    page = httpx.get(locked.url + "/", follow_redirects=True)
    assert "sk-test-123" not in page.text
    for creds in (("alice", "wonderland"), ("api", "sk-test-123")):  # the key logs in as "api" only
        c = Client(locked.url, auth=creds, verbose=False)
        try:
            reply, stats = c.predict(*CHAT, api_name="/chat")
            assert stats["completion_tokens"] > 0
        finally:
            c.close()
    with pytest.raises(ValueError, match="Could not login"):
        Client(locked.url, auth=("alice", "wrong"), verbose=False)


def test_metrics_open_by_default_and_protectable(locked, cache_dir):
    assert httpx.get(locked.url + "/metrics").status_code == 200
    with LiveServer(make_settings(cache_dir=cache_dir, api_key="k", protect_metrics=True)) as srv:
        assert httpx.get(srv.url + "/metrics").status_code == 401
        assert httpx.get(srv.url + "/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
        assert httpx.get(srv.url + "/health").status_code == 503  # open, and honest: no model


def test_rate_limit_answers_429_with_retry_after_and_a_clear_ui_error(cache_dir, monkeypatch):
    # the limiter's own clock stands still, so slow replies on a busy machine refill no bucket
    monkeypatch.setattr("serving.ratelimit.time", SimpleNamespace(monotonic=lambda: 1000.0))
    with LiveServer(make_settings(cache_dir=cache_dir, rate_limit_rpm=2)) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512))
        oai = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        for _ in range(2):
            oai.chat.completions.create(model="default", messages=MSG, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as err:
            oai.chat.completions.create(model="default", messages=MSG, max_tokens=2)
        assert int(err.value.response.headers["retry-after"]) >= 1
        assert "requests per minute" in err.value.response.json()["error"]["message"]
        c = Client(srv.url, verbose=False)  # same client address: the UI/Gradio API shares the budget
        try:
            with pytest.raises(Exception, match="Rate limit"):
                c.predict(*CHAT, api_name="/chat")
        finally:
            c.close()
        assert httpx.get(srv.url + "/health").status_code == 200


def test_the_api_page_lists_exactly_the_endpoints_the_auth_test_covers(locked):
    c = Client(locked.url, auth=("alice", "wonderland"), verbose=False)
    try:
        named = c.view_api(return_format="dict", print_info=False)["named_endpoints"]
    finally:
        c.close()
    assert sorted(n.lstrip("/") for n in named) == sorted(ENDPOINTS)


def test_concurrent_stream_limit_answers_429_on_the_second_stream(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, max_streams_per_client=1)) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512))
        body = {"model": "default", "messages": [{"role": "user", "content": "Count from 1 to 300."}],
                "max_tokens": 400, "temperature": 0, "stream": True}
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", srv.url + "/v1/chat/completions", json=body) as first:
                next(first.iter_lines())  # the first stream is running
                second = http.post(srv.url + "/v1/chat/completions", json={**body, "stream": False})
                assert second.status_code == 429
                assert "Too many concurrent requests" in second.json()["error"]["message"]
                assert int(second.headers["retry-after"]) >= 1
        # the first one's slot is freed when it ends: the next request goes through
        deadline = time.time() + 120  # a cancelled decode step ends late on a busy machine
        while srv.manager.metrics.running and time.time() < deadline:
            time.sleep(0.01)
        ok = http_post_ok(srv.url)
        assert ok.status_code == 200


def http_post_ok(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": "default", "messages": MSG, "max_tokens": 2},
                      timeout=60)
