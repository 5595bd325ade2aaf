"""Live monitoring on the real app: /stats, /metrics (Prometheus), the request log, memory figures."""

from __future__ import annotations

import json
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings

GREEDY = ("", 16, 0.0, 1.0, 0, 1.0, 0)


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):  # raises on malformed exposition text
        for sample in family.samples:
            key = sample.name + json.dumps(sample.labels, sort_keys=True)
            values[key] = sample.value
    return values


def total(values: dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k.split("{")[0] == name)


def test_a_chat_shows_up_in_stats_and_metrics(client, live_app):
    before_stats = client.predict(api_name="/stats")
    before = scrape(live_app.url)
    reply, stats = client.predict("Say hello.", [], *GREEDY, api_name="/chat")
    after_stats = client.predict(api_name="/stats")
    after = scrape(live_app.url)

    assert after_stats["requests"]["total"] == before_stats["requests"]["total"] + 1
    last = after_stats["recent"][-1]
    assert last["request_id"] == stats["request_id"]
    assert last["ttft_s"] > 0 and last["completion_tokens"] > 0 and last["endpoint"] == "chat"
    assert last["peak_rss_bytes"] > 50 * 2**20

    name = "quantlab:time_to_first_token_seconds_count"
    assert total(after, name) == total(before, name) + 1
    gen = "quantlab:generation_tokens_total"
    assert total(after, gen) - total(before, gen) == stats["completion_tokens"]
    assert total(after, "quantlab:prompt_tokens_total") - total(before, "quantlab:prompt_tokens_total") == stats["prompt_tokens"]
    assert total(after, "quantlab:inter_token_latency_seconds_count") > total(before, "quantlab:inter_token_latency_seconds_count")
    model_label = '"model_name": "%s"' % stats["model"]
    assert any(model_label in k for k in after if k.startswith("quantlab:e2e_request_latency_seconds_count"))
    assert total(after, "quantlab:process_resident_memory_bytes") > 50 * 2**20
    assert total(after, "quantlab:num_requests_running") == 0


def test_no_gpu_is_reported_plainly_not_faked(client):
    mem = client.predict(api_name="/stats")["memory"]
    gpu = mem["gpu"]
    if gpu["available"]:  # on a GPU machine: real figures
        assert gpu["devices"][0]["total_bytes"] > 0
    else:
        assert gpu["devices"] == [] and gpu["reason"]
    assert mem["process"]["rss_bytes"] > 0 and mem["system"]["total_bytes"] > mem["system"]["available_bytes"] > 0


def test_memory_rises_on_load_and_falls_on_unload_and_requests_are_logged(tmp_path, cache_dir):
    log = tmp_path / "requests.jsonl"
    settings = make_settings(cache_dir=cache_dir, request_log=str(log), monitor_interval=0.2)
    with LiveServer(settings) as srv:
        from gradio_client import Client

        c = Client(srv.url, verbose=False)
        try:
            def rss() -> float:
                time.sleep(0.5)  # a fresh sample
                return c.predict(api_name="/stats")["memory"]["process"]["rss_bytes"]

            def gauge() -> float:
                return total(scrape(srv.url), "quantlab:model_footprint_bytes")

            empty = rss()
            assert gauge() == 0
            c.predict("embedded", "transformers", "bf16", api_name="/load_model")
            c.predict("Say hello.", [], *GREEDY, api_name="/chat")
            loaded = rss()
            footprint = gauge()
            assert footprint > 200 * 2**20
            c.predict(api_name="/unload_model")
            unloaded = rss()
            print(f"\nRSS MiB: empty {empty / 2**20:.0f}, bf16 loaded {loaded / 2**20:.0f}, unloaded {unloaded / 2**20:.0f}")
            # Other tests in this process may already have torch's libraries resident (and glibc may
            # reuse pages it kept), so only the weights' share is certain: most of the footprint.
            assert loaded - empty > 0.5 * footprint
            assert loaded - unloaded > 0.5 * footprint  # the weights go back to the OS
            assert gauge() == 0
        finally:
            c.close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 1
    rec = lines[0]
    assert rec["endpoint"] == "chat" and rec["outcome"] == "ok" and rec["quantization"] == "bf16"
    assert rec["completion_tokens"] > 0 and rec["ttft_s"] > 0 and rec["client"] == "127.0.0.1"
    assert "prompt" not in rec and "Say hello" not in log.read_text()


def test_prompts_are_logged_only_when_asked(tmp_path, cache_dir):
    log = tmp_path / "requests.jsonl"
    with LiveServer(make_settings(cache_dir=cache_dir, request_log=str(log), log_prompts=True)) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512))
        r = httpx.post(srv.url + "/gradio_api/call/chat", json={"data": ["Tell me a secret.", [], *GREEDY]})
        event_id = r.json()["event_id"]
        httpx.get(f"{srv.url}/gradio_api/call/chat/{event_id}", timeout=60)
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec["prompt"] == "Tell me a secret."


def test_a_compare_is_counted_like_a_chat_and_its_variant_is_protected(client, live_app):
    """Lab generations go through the ModelManager: /metrics (endpoint "compare"), the Monitor's request
    table (/stats recent) and the cache guard all see them."""
    import pytest

    from pathlib import Path

    def compare_tokens(values):
        return sum(v for k, v in values.items()
                   if k.startswith("quantlab:generation_tokens_total") and '"endpoint": "compare"' in k)

    before = scrape(live_app.url)
    final = client.predict("Name three colours.", ["llamacpp:Q8_0"], "embedded", 16, 0.0, 0, api_name="/compare")
    after = scrape(live_app.url)
    produced = final[0]["stats"]["completion_tokens"]
    assert produced > 0
    assert compare_tokens(after) - compare_tokens(before) == produced

    recent = client.predict(20, api_name="/stats")["recent"]
    row = [r for r in recent if r["endpoint"] == "compare"][-1]
    assert row["completion_tokens"] == produced and row["quantization"] == "Q8_0" and row["outcome"] == "ok"

    held = httpx.get(live_app.url + "/health").json()["lab_models"]
    q8 = [m for m in held if m["quantization"] == "Q8_0"]
    assert q8, held
    folder_id = "gguf:" + Path(q8[0]["source"]).parent.name
    with pytest.raises(Exception, match="holds the model that is loaded now"):
        client.predict(folder_id, api_name="/delete_cached")
    assert Path(q8[0]["source"]).exists()
