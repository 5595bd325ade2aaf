"""The lab on the model pool and one memory account, through the real server.

One memory account, with three kinds of model in memory (the chat's, one loaded by name, a lab
variant): each model's memory is the same number, in MiB, in the Model tab's text and its Details,
the Monitor's rows, /stats, /metrics, /health and /v1/models; no surface shows the engine's raw
footprint beside it as a second figure; the Monitor's rows add up to the models' sum, and the sum
plus the process's own line is RSS (tolerance: 0.1 MiB of rounding per figure).

The lab on the pool: a variant Compare loads is a pool model named
``<model>@<quantization>`` (``embedded@Q8_0``): listed in GET /v1/models with its memory, counted in
the memory account (/stats, /metrics), answered by name through the openai client without a second
load, evicted by --models-max like any model loaded by name, borrowed again by Evaluate, and unloaded
by "Unload compared variants". A client may name a variant the lab never made."""

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

SHORT = [{"role": "user", "content": "Say hello."}]


def listed(url: str) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}


@pytest.fixture(scope="module")
def srv(tmp_path_factory, embedded_gguf, cache_dir):
    d = tmp_path_factory.mktemp("pool-lab")
    shutil.copyfile(embedded_gguf, d / "alpha.gguf")
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=d, models_max=2, monitor_interval=0.2)) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048))
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        c.chat.completions.create(model="alpha", messages=SHORT, max_tokens=2)
        list(srv.app.state.services.compare("Hi", ["llamacpp:Q8_0"], "embedded", 2))
        yield srv


@pytest.fixture(scope="module")
def gradio(srv):
    from gradio_client import Client

    c = Client(srv.url, verbose=False)
    yield c
    c.close()


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
    parts = status["model"]["memory"]  # the engine's own measurement is the account's weights + KV
    assert metric_mib(srv.url, "quantlab:model_footprint_bytes") == {
        chat: round((parts["weights_bytes"] + parts["kv_bytes"]) / 2**20, 1)}


def test_the_rows_and_the_process_line_add_up_to_rss(srv):
    from ui.monitor import figures_markdown

    stats = srv.app.state.services.stats(50)
    acc = stats["memory_account"]
    rows = [r["memory_mib"] for r in acc["models"]]
    assert len(rows) == 3
    assert abs(sum(rows) - acc["models_mib"]) <= 0.1 * len(rows)
    assert abs(acc["models_mib"] + acc["prompt_cache_mib"] + acc["process_other_mib"] - acc["rss_mib"]) <= 0.3
    assert 0 < acc["models_mib"] < acc["rss_mib"] and acc["process_other_mib"] > 0
    line = re.search(r"\*\*Models together\*\* ([\d,.]+) MiB \+ \*\*prompt cache\*\* ([\d,.]+) MiB \+ "
                     r"\*\*the process beyond them\*\* ([\d,.]+) MiB[^=]*= \*\*RSS\*\* ([\d,.]+) MiB",
                     figures_markdown(stats))
    assert [float(g.replace(",", "")) for g in line.groups()] == [acc["models_mib"], acc["prompt_cache_mib"],
                                                                  acc["process_other_mib"], acc["rss_mib"]]
    other = metric_mib(srv.url, "quantlab:process_other_memory_bytes")[""]
    assert other > 0


def test_a_compared_variant_is_a_pool_model_with_one_memory_figure(srv, gradio):
    final = gradio.predict("Name three colours.", ["llamacpp:Q8_0"], "embedded", 8, 0.0, 0, api_name="/compare")
    assert final[0]["variant"] == "llamacpp:Q8_0" and final[0]["stats"]["completion_tokens"] > 0
    row = listed(srv.url)["embedded@Q8_0"]
    assert row["status"] == "loaded" and row["kind"] == "variant" and row["quantization"] == "Q8_0"
    stats = gradio.predict(50, api_name="/stats")
    account = {r["name"]: r for r in stats["memory_account"]["models"]}
    assert account["embedded@Q8_0"]["memory_mib"] == row["memory_mib"] == final[0]["memory"]["total_mib"]
    assert metric_mib(srv.url, "quantlab:model_memory_bytes")["embedded@Q8_0"] == row["memory_mib"]

    # a client asks for it by name: the same resident answers (no second load)
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    reply = c.chat.completions.create(model="embedded@Q8_0", messages=SHORT, max_tokens=4, temperature=0)
    assert reply.model == "embedded@Q8_0" and reply.choices[0].message.content is not None
    assert srv.manager.pool.events[("embedded@Q8_0", "load")] == 1

    # Evaluate borrows the same resident model as its reference (no load), and gives it back
    rows = gradio.predict(["llamacpp:Q8_0"], None, 64, "embedded", "llamacpp:Q8_0", 32, "all", api_name="/evaluate")
    assert rows[0]["is_reference"] and rows[0]["ppl"] > 1
    assert srv.manager.pool.events[("embedded@Q8_0", "load")] == 1
    assert all(r.pins == 0 for r in srv.manager.pool.residents())


def test_variants_are_evicted_by_models_max_and_named_by_clients(srv):
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    assert c.chat.completions.create(model="embedded@Q8_0", messages=SHORT, max_tokens=2).model == "embedded@Q8_0"
    assert c.chat.completions.create(model="alpha", messages=SHORT, max_tokens=2).model == "alpha"
    # a variant the lab never made (its KV cache quantized): loaded on demand; --models-max 2 evicts
    # the least recently used (embedded@Q8_0)
    kv = "embedded@Q8_0+kv:q8_0"
    assert c.chat.completions.create(model=kv, messages=SHORT, max_tokens=2).model == kv
    rows = listed(srv.url)
    assert rows[kv]["status"] == "loaded" and rows["alpha"]["status"] == "loaded"
    assert rows["embedded@Q8_0"]["status"] == "unloaded"  # listed still: it can be asked for again
    assert srv.manager.pool.events[("embedded@Q8_0", "evicted")] >= 1
    for bad in ("nothere@Q8_0", "alpha@Q9_X", "alpha@", "../alpha@Q8_0", "alpha@Q8_0+kv:q3"):
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            c.chat.completions.create(model=bad, messages=SHORT, max_tokens=2)
    assert {n for n, r in listed(srv.url).items() if r["status"] == "loaded"} == {"embedded", "alpha", kv}


def test_unload_compared_variants_frees_the_variants_only(srv, gradio):
    kv = "embedded@Q8_0+kv:q8_0"
    final = gradio.predict("Hi.", ["llamacpp:Q8_0+kv:q8_0"], "embedded", 2, 0.0, 0, api_name="/compare")
    assert final[0]["stats"]["completion_tokens"] > 0
    assert srv.manager.pool.events[(kv, "load")] == 1  # the client's load: Compare borrowed it
    assert srv.app.state.services.release_lab() == "Unloaded 1 compared variant."
    rows = listed(srv.url)
    assert rows[kv]["status"] == "unloaded" and rows["alpha"]["status"] == "loaded"
    names = {r["name"] for r in gradio.predict(50, api_name="/stats")["memory_account"]["models"]}
    assert names == {srv.manager.current.name, "alpha"}
    with pytest.raises(Exception, match="at most 2"):  # more variants than --models-max: refused up front
        gradio.predict("Hi.", ["llamacpp:Q8_0", "llamacpp:Q4_0", "llamacpp:Q4_K_M"], "alpha", 2, 0.0, 0,
                       api_name="/compare")
