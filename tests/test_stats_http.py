"""GET /stats over plain HTTP, as the README promises beside /metrics: the same memory and latency
figures as the Gradio API's /stats, a bad ``last`` is an OpenAI-shaped 400, and it sits behind
--api-key like the API."""

from __future__ import annotations

import httpx
import openai
import pytest
from gradio_client import Client

from app import LiveServer
from tests.live_server import make_settings

pytestmark = pytest.mark.slow


def test_stats_over_http_equal_the_gradio_endpoint(live_app):
    oai = openai.OpenAI(base_url=live_app.url + "/v1", api_key="x", max_retries=0)
    oai.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    http = httpx.get(live_app.url + "/stats", params={"last": 5}, timeout=60)
    assert http.status_code == 200
    body = http.json()
    gradio = Client(live_app.url, verbose=False).predict(5, api_name="/stats")
    assert body.keys() == gradio.keys()
    assert body["recent"][-1]["completion_tokens"] == gradio["recent"][-1]["completion_tokens"] > 0
    assert body["recent"][-1]["request_id"] == gradio["recent"][-1]["request_id"]
    assert len(body["recent"]) <= 5 and body["requests"]["total"] >= 1


@pytest.mark.parametrize("last", ["0", "abc", "5000"])
def test_a_bad_last_is_an_openai_shaped_400(live_app, last):
    r = httpx.get(live_app.url + "/stats", params={"last": last}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "last"
    assert httpx.get(live_app.url + "/stats", timeout=30).status_code == 200  # still serving


def test_stats_need_the_api_key_when_one_is_set(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, api_key="sekrit", request_log="")) as srv:
        assert httpx.get(srv.url + "/stats", timeout=30).status_code == 401
        wrong = httpx.get(srv.url + "/stats", headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert wrong.status_code == 401
        ok = httpx.get(srv.url + "/stats", headers={"Authorization": "Bearer sekrit"}, timeout=30)
        assert ok.status_code == 200 and "memory" in ok.json()
