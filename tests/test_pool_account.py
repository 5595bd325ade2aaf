"""One memory account, through the real server with three kinds of model in memory (the chat's, one
loaded by name, a lab variant): each model's memory is the same number, in MiB, in the Model tab's
text and its Details, the Monitor's rows, /stats, /metrics, /health and /v1/models; no surface shows
the engine's raw footprint beside it as a second figure; the Monitor's rows add up to the models'
sum, and the sum plus the process's own line is RSS (tolerance: 0.1 MiB of rounding per figure)."""

from __future__ import annotations

import re
import shutil

import httpx
import openai
import pytest

from app import LiveServer
from backends.base import ModelSpec
from tests.live_server import make_settings
from tests.test_pool_memory import metric_mib

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def srv(tmp_path_factory, embedded_gguf, cache_dir):
    d = tmp_path_factory.mktemp("pool-account")
    shutil.copyfile(embedded_gguf, d / "alpha.gguf")
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=d, monitor_interval=0.2)) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048))
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        c.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        list(srv.app.state.services.compare("Hi", ["llamacpp:Q8_0"], "embedded", 2))
        yield srv


def test_every_surface_shows_the_same_memory_of_each_model(srv):
    from ui.model import describe
    from ui.monitor import figures_markdown

    services = srv.app.state.services
    status = services.model_status()  # the Model tab's Details
    stats = services.stats(50)  # the Monitor's and /stats' figures (the Gradio API's /stats: the same call)
    account = {r["name"]: r["memory_mib"] for r in stats["memory_account"]["models"]}
    chat = status["model"]["name"]
    assert set(account) == {chat, "alpha", "embedded@Q8_0"}
    assert all(v > 100 for v in account.values())

    text = describe(status)  # the Model tab's text: "Memory: 320.1 MiB = ..."
    shown = float(re.search(r"\*\*Memory:\*\* ([\d,.]+) MiB", text).group(1).replace(",", ""))
    assert shown == status["model"]["memory_mib"] == status["model"]["memory"]["total_mib"] == account[chat]
    assert "footprint_mib" not in status["model"] and "footprint_bytes" not in status["model"]

    monitor = figures_markdown(stats)  # a row per model in memory
    for name, mib in account.items():
        assert re.search(rf"\| {re.escape(name)} \|[^\n]*\| {mib:,.1f} \|", monitor), (name, monitor)

    pool_views = {m["name"]: m["memory_mib"] for m in stats["pool_models"]}
    assert pool_views == {"alpha": account["alpha"], "embedded@Q8_0": account["embedded@Q8_0"]}
    assert stats["model"]["memory_mib"] == account[chat]

    health = httpx.get(srv.url + "/health").json()
    assert health["model"]["memory_mib"] == account[chat] and "footprint_mib" not in health["model"]
    assert {r["name"]: r["memory_mib"] for r in health["pool"] if r["status"] == "loaded"} == {
        "embedded": account[chat], "alpha": account["alpha"], "embedded@Q8_0": account["embedded@Q8_0"]}

    listed = {m["id"]: m["memory_mib"] for m in httpx.get(srv.url + "/v1/models").json()["data"]}
    assert (listed["embedded"], listed["alpha"], listed["embedded@Q8_0"]) == (
        account[chat], account["alpha"], account["embedded@Q8_0"])

    assert metric_mib(srv.url, "quantlab:model_memory_bytes") == account
    assert metric_mib(srv.url, "quantlab:model_footprint_bytes") == {chat: account[chat]}


def test_the_rows_and_the_process_line_add_up_to_rss(srv):
    from ui.monitor import figures_markdown

    stats = srv.app.state.services.stats(50)
    acc = stats["memory_account"]
    rows = [r["memory_mib"] for r in acc["models"]]
    assert len(rows) == 3
    assert abs(sum(rows) - acc["models_mib"]) <= 0.1 * len(rows)
    assert abs(acc["models_mib"] + acc["process_other_mib"] - acc["rss_mib"]) <= 0.2
    assert 0 < acc["models_mib"] < acc["rss_mib"] and acc["process_other_mib"] > 0
    line = re.search(r"\*\*Models together\*\* ([\d,.]+) MiB \+ \*\*the process beyond them\*\* ([\d,.]+) MiB"
                     r"[^=]*= \*\*RSS\*\* ([\d,.]+) MiB", figures_markdown(stats))
    assert [float(g.replace(",", "")) for g in line.groups()] == [acc["models_mib"], acc["process_other_mib"],
                                                                  acc["rss_mib"]]
    other = metric_mib(srv.url, "quantlab:process_other_memory_bytes")[""]
    assert other > 0
