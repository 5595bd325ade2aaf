"""The lab on the model pool, through the real server: a variant Compare loads is a pool model named
``<model>@<quantization>`` (``embedded@Q8_0``): listed in GET /v1/models with its memory, counted in
the memory account (/stats, /metrics), answered by name through the openai client without a second
load, evicted by --models-max like any model loaded by name, borrowed again by Evaluate, and unloaded
by "Unload compared variants". A client may name a variant the lab never made."""

from __future__ import annotations

import shutil

import httpx
import openai
import pytest

from app import LiveServer
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
        yield srv


@pytest.fixture(scope="module")
def gradio(srv):
    from gradio_client import Client

    c = Client(srv.url, verbose=False)
    yield c
    c.close()


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
    # a variant the lab never made, of a --models-dir model: loaded on demand; --models-max 2 evicts
    # the least recently used (embedded@Q8_0)
    assert c.chat.completions.create(model="alpha@Q8_0", messages=SHORT, max_tokens=2).model == "alpha@Q8_0"
    rows = listed(srv.url)
    assert rows["alpha@Q8_0"]["status"] == "loaded" and rows["alpha"]["status"] == "loaded"
    assert rows["embedded@Q8_0"]["status"] == "unloaded"  # listed still: it can be asked for again
    assert srv.manager.pool.events[("embedded@Q8_0", "evicted")] >= 1
    for bad in ("nothere@Q8_0", "alpha@Q9_X", "alpha@", "../alpha@Q8_0"):
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            c.chat.completions.create(model=bad, messages=SHORT, max_tokens=2)
    assert {n for n, r in listed(srv.url).items() if r["status"] == "loaded"} == {"alpha", "alpha@Q8_0"}


def test_unload_compared_variants_frees_the_variants_only(srv, gradio):
    gradio.predict("Hi.", ["llamacpp:Q8_0"], "alpha", 2, 0.0, 0, api_name="/compare")
    assert listed(srv.url)["alpha@Q8_0"]["status"] == "loaded"
    assert srv.app.state.services.release_lab() == "Unloaded 1 compared variant."
    rows = listed(srv.url)
    assert rows["alpha@Q8_0"]["status"] == "unloaded" and rows["alpha"]["status"] == "loaded"
    names = {r["name"] for r in gradio.predict(50, api_name="/stats")["memory_account"]["models"]}
    assert names == {"alpha"}
    with pytest.raises(Exception, match="at most 2"):  # more variants than --models-max: refused up front
        gradio.predict("Hi.", ["llamacpp:Q8_0", "llamacpp:Q4_0", "llamacpp:Q4_K_M"], "alpha", 2, 0.0, 0,
                       api_name="/compare")
