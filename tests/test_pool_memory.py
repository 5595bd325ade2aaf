"""The pool beside the chat's model, through the real server: the chat's model answers by its name,
'default' and the pool name of its file (no second copy is loaded); one memory account: the same
model's memory is the same number in /v1/models, the Gradio API's /model_status and /stats,
/health and /metrics, and the models plus the process's remainder add up to RSS; --keep-alive
unloads an idle pool model."""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backends.base import ModelSpec
from app import LiveServer
from tests.live_server import make_settings, wait_for

pytestmark = pytest.mark.slow

SHORT = [{"role": "user", "content": "Say hello."}]


def ask(url: str, model: str):
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    return c.chat.completions.create(model=model, messages=SHORT, max_tokens=4, temperature=0)


def metric_mib(url: str, name: str, **labels) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                found[s.labels.get("model_name", "")] = round(s.value / 2**20, 1)
    return found


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, embedded_gguf):
    d = tmp_path_factory.mktemp("pool-models")
    shutil.copyfile(embedded_gguf, d / "alpha.gguf")
    return d


def test_one_memory_account_beside_the_chat_model(models_dir, cache_dir):
    from gradio_client import Client

    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=models_dir, monitor_interval=0.2)) as srv:
        chat = srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048))
        assert ask(srv.url, "alpha").model == "alpha"
        for name in (chat.name, "default", "embedded"):  # all three are the chat's model
            assert ask(srv.url, name).choices[0].message.content is not None
        models = {m["id"]: m for m in httpx.get(srv.url + "/v1/models").json()["data"]}
        assert models["embedded"]["status"] == "loaded" and models["alpha"]["status"] == "loaded"
        roles = sorted((role, info.name) for role, info in srv.manager.held_by_role())
        assert roles == [("chat", chat.name), ("pool", "alpha")]  # 'embedded' loaded no second copy

        c = Client(srv.url, verbose=False)
        try:
            status = c.predict(api_name="/model_status")
            stats = c.predict(50, api_name="/stats")
        finally:
            c.close()
        health = httpx.get(srv.url + "/health").json()
        gauges = metric_mib(srv.url, "quantlab:model_memory_bytes")
        chat_mib = status["model"]["memory"]["total_mib"]
        alpha_mib = status["pool_models"][0]["memory"]["total_mib"]
        assert chat_mib > 100 and alpha_mib > 100
        assert stats["model"]["memory"]["total_mib"] == chat_mib == health["model"]["memory_mib"] == gauges[chat.name]
        assert stats["pool_models"][0]["memory"]["total_mib"] == alpha_mib == models["alpha"]["memory_mib"]
        assert alpha_mib == gauges["alpha"]
        assert next(r["memory_mib"] for r in health["pool"] if r["name"] == "alpha") == alpha_mib
        assert next(r["memory_mib"] for r in health["pool"] if r["name"] == "embedded") == chat_mib

        account = stats["memory_account"]
        assert [(r["role"], r["memory_mib"]) for r in account["models"]] == [("chat", chat_mib), ("pool", alpha_mib)]
        # the rows and the process's own line add up to RSS (rounding to 0.1 MiB each); the models are in RSS on CPU
        assert abs(account["models_mib"] + account["prompt_cache_mib"] + account["process_other_mib"]
                   - account["rss_mib"]) <= 0.3
        assert 0 < account["models_mib"] < account["rss_mib"]
        other = metric_mib(srv.url, "quantlab:process_other_memory_bytes")[""]
        assert other > 0


def test_keep_alive_unloads_an_idle_pool_model(models_dir, cache_dir, tmp_path):
    log = tmp_path / "requests.jsonl"
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=models_dir, keep_alive="1s",
                                  request_log=str(log))) as srv:
        assert httpx.get(srv.url + "/health").status_code == 200  # the pool serves on demand
        assert ask(srv.url, "alpha").model == "alpha"
        wait_for(lambda: {m["id"]: m["status"] for m in httpx.get(srv.url + "/v1/models").json()["data"]}["alpha"]
                 == "unloaded", 60, "alpha unloaded after 1 s idle")
        wait_for(lambda: srv.manager.held_models() == [], 60, "alpha's memory freed")
        assert ask(srv.url, "alpha").model == "alpha"  # and loaded again on the next request
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    events = [(r["event"], r["model"]) for r in lines if "event" in r]
    assert events[:3] == [("model_load", "alpha"), ("model_idle_unload", "alpha"), ("model_load", "alpha")]
    assert [r["model"] for r in lines if "request_id" in r] == ["alpha", "alpha"]  # the requests, as before


def test_the_gradio_api_acts_on_the_pool(models_dir, cache_dir):
    from gradio_client import Client

    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=models_dir)) as srv:
        c = Client(srv.url, verbose=False)
        try:
            c.predict("alpha", "llamacpp", "", api_name="/load_model")  # a pool name becomes the chat's model
            rows = {r["name"]: r for r in c.predict(api_name="/model_status")["pool"]}
            assert rows["alpha"]["status"] == "loaded" and rows["alpha"]["chat_model"]
            assert rows["embedded"]["status"] == "unloaded"
            assert ask(srv.url, "alpha").choices[0].message.content is not None
            assert ask(srv.url, "embedded").model == "embedded"  # loaded by name beside it
            assert "Unloaded embedded" in c.predict("embedded", api_name="/unload_model")
            with pytest.raises(Exception, match="is not loaded"):
                c.predict("embedded", api_name="/unload_model")
            with pytest.raises(Exception, match="does not exist"):
                c.predict("../alpha", api_name="/unload_model")
            assert "Unloaded alpha" in c.predict("alpha", api_name="/unload_model")
            assert srv.manager.current is None
            assert {r["name"]: r["status"] for r in c.predict(api_name="/model_status")["pool"]} == {
                "embedded": "unloaded", "alpha": "unloaded"}
        finally:
            c.close()
