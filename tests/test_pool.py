"""The model pool through the real server and the real ``openai`` client: two GGUF files in a
temporary --models-dir (copies of the embedded model), each answered by name; /v1/models and
llama-server's /models statuses before and after; --models-max 1 evicts the least recently used
and never a model that is streaming; a failing load and bad names change nothing."""

from __future__ import annotations

import shutil
import threading

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import LiveServer
from tests.live_server import make_settings, wait_for

pytestmark = pytest.mark.slow

LONG = [{"role": "user", "content": "Count from 1 to 300, separated by commas."}]
SHORT = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, embedded_gguf):
    d = tmp_path_factory.mktemp("models")
    shutil.copyfile(embedded_gguf, d / "alpha.gguf")
    shutil.copyfile(embedded_gguf, d / "beta.gguf")
    return d


def statuses(url: str) -> dict[str, str]:
    return {m["id"]: m["status"] for m in httpx.get(url + "/v1/models").json()["data"]}


def pool_events(url: str) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == "quantlab:model_pool_events_total":
                found[(s.labels["model_name"], s.labels["event"])] = s.value
    return found


def oai(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def ask(c: openai.OpenAI, model: str, max_tokens: int = 8):
    return c.chat.completions.create(model=model, messages=SHORT, max_tokens=max_tokens, temperature=0)


@pytest.fixture(scope="module")
def pool_max1(models_dir, cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=models_dir, models_max=1, parallel=2)) as srv:
        yield srv


def test_each_model_answers_by_name_and_lru_is_evicted(pool_max1):
    srv = pool_max1
    before = statuses(srv.url)
    assert before == {"embedded": "unloaded", "alpha": "unloaded", "beta": "unloaded"}
    c = oai(srv)
    a = ask(c, "alpha")
    assert a.model == "alpha" and a.choices[0].message.content
    assert statuses(srv.url) == {"embedded": "unloaded", "alpha": "loaded", "beta": "unloaded"}
    b = ask(c, "beta")
    assert b.model == "beta" and b.choices[0].message.content
    # --models-max 1: alpha (least recently used, idle) made room for beta
    assert statuses(srv.url) == {"embedded": "unloaded", "alpha": "unloaded", "beta": "loaded"}
    row = next(m for m in httpx.get(srv.url + "/v1/models").json()["data"] if m["id"] == "beta")
    assert row["memory_mib"] > 0 and row["context_length"] > 0
    # llama-server router's shape of the same list
    routed = {m["id"]: m["status"]["value"] for m in httpx.get(srv.url + "/models").json()["data"]}
    assert routed == {"embedded": "unloaded", "alpha": "unloaded", "beta": "loaded"}
    # a name with its file extension is the same model
    assert ask(c, "beta.gguf").model == "beta"
    assert pool_events(srv.url)[("alpha", "evicted")] >= 1 and pool_events(srv.url)[("beta", "load")] >= 1


def test_a_streaming_model_is_never_evicted(pool_max1):
    srv = pool_max1
    c = oai(srv)
    ask(c, "alpha")  # alpha resident, the pool full
    stream = c.chat.completions.create(model="alpha", messages=LONG, max_tokens=1500, temperature=0, stream=True)
    chunks = iter(stream)
    text = ""
    while not text:  # alpha is generating
        text += next(chunks).choices[0].delta.content or ""
    other: dict = {}

    def request_beta():
        try:
            other["reply"] = ask(c, "beta")
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            other["error"] = exc

    t = threading.Thread(target=request_beta)
    t.start()
    # beta waits for room: listed as loading while alpha, still streaming, stays loaded
    seen = wait_for(lambda: statuses(srv.url).get("beta") == "loading" and statuses(srv.url), 120, "beta waiting")
    assert seen["alpha"] == "loaded"
    assert "reply" not in other and "error" not in other
    finish = None
    for chunk in chunks:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish in ("stop", "length")  # finished intact, not cut
    assert len(text) > 20
    t.join(timeout=300)
    assert "error" not in other, other.get("error")
    assert other["reply"].model == "beta" and other["reply"].choices[0].message.content
    assert statuses(srv.url)["alpha"] == "unloaded" and statuses(srv.url)["beta"] == "loaded"


def test_bad_names_are_refused_and_change_nothing(pool_max1, models_dir, tmp_path):
    srv = pool_max1
    c = oai(srv)
    ask(c, "beta")
    outside = tmp_path / "outside.gguf"
    shutil.copyfile(models_dir / "alpha.gguf", outside)
    (models_dir / "escape.gguf").symlink_to(outside)  # a link out of --models-dir is not served
    gone = models_dir / "gone.gguf"
    shutil.copyfile(models_dir / "alpha.gguf", gone)
    assert "gone" in statuses(srv.url)
    gone.unlink()
    try:
        before = statuses(srv.url)
        for name in ("../alpha", "../../etc/passwd", str(outside), "escape", "gone", "nope", "alpha/../beta"):
            with pytest.raises(openai.NotFoundError) as err:
                ask(c, name)
            assert "does not exist" in err.value.message and err.value.code == "model_not_found"
        r = httpx.post(srv.url + "/models/load", json={"model": "../alpha"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert statuses(srv.url) == before
        assert ask(c, "beta").choices[0].message.content  # still serving
    finally:
        (models_dir / "escape.gguf").unlink()


def test_a_failing_load_leaves_the_pool_serving(pool_max1, models_dir):
    srv = pool_max1
    c = oai(srv)
    ask(c, "beta")
    broken = models_dir / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    try:
        with pytest.raises(openai.BadRequestError) as err:
            ask(c, "broken")
        assert "broken.gguf" in err.value.message
        after = statuses(srv.url)
        assert after["broken"] == "error" and after["beta"] == "loaded"
        assert ask(c, "beta").choices[0].message.content
    finally:
        broken.unlink()


def test_without_autoload_a_model_must_be_loaded_first(models_dir, cache_dir):
    settings = make_settings(cache_dir=cache_dir, models_dir=models_dir, no_models_autoload=True)
    with LiveServer(settings) as srv:
        c = oai(srv)
        with pytest.raises(openai.BadRequestError) as err:
            ask(c, "alpha")
        assert err.value.code == "model_not_loaded"
        assert "'alpha'" in err.value.message and "POST /models/load" in err.value.message
        assert statuses(srv.url)["alpha"] == "unloaded"
        r = httpx.post(srv.url + "/models/load", json={"model": "alpha"}, timeout=300)
        assert r.status_code == 200 and r.json() == {"success": True}
        assert ask(c, "alpha").model == "alpha"
        r = httpx.post(srv.url + "/models/unload", json={"model": "alpha"}, timeout=60)
        assert r.status_code == 200
        assert statuses(srv.url)["alpha"] == "unloaded"
        r = httpx.post(srv.url + "/models/unload", json={"model": "alpha"}, timeout=60)
        assert r.status_code == 400 and "not loaded" in r.json()["error"]["message"]


def test_a_memory_budget_evicts_or_refuses_before_a_load(models_dir, cache_dir):
    from optimization.estimates import estimate_load

    one = estimate_load(models_dir / "alpha.gguf", None, 2048, 2).total
    budget = int(one * 1.5) // 2**20  # one model fits, two do not
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=models_dir, parallel=2,
                                  memory_budget_mib=budget)) as srv:
        c = oai(srv)
        assert ask(c, "alpha").model == "alpha"
        assert ask(c, "beta").model == "beta"  # alpha (idle) made room: no --models-max, the budget did
        assert statuses(srv.url) == {"embedded": "unloaded", "alpha": "unloaded", "beta": "loaded"}
        assert pool_events(srv.url)[("alpha", "evicted")] == 1
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=models_dir, parallel=2,
                                  memory_budget_mib=one // 2 // 2**20)) as srv:
        c = oai(srv)
        with pytest.raises(openai.APIStatusError) as err:
            ask(c, "alpha")
        assert err.value.status_code == 507 and "memory-budget-mib" in err.value.message
        assert statuses(srv.url)["alpha"] == "error"


def test_concurrent_requests_for_a_model_load_it_once(pool_max1):
    srv = pool_max1
    name = next(n for n, s in statuses(srv.url).items() if s == "unloaded" and n != "embedded")
    loads = pool_events(srv.url).get((name, "load"), 0)
    c = oai(srv)
    replies: list = []
    threads = [threading.Thread(target=lambda: replies.append(ask(c, name))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [r.model for r in replies] == [name] * 3
    assert pool_events(srv.url)[(name, "load")] == loads + 1


def test_the_pool_routes_need_the_api_key(models_dir, cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=models_dir, api_key="k3y")) as srv:
        for method, path in (("GET", "/models"), ("POST", "/models/load"), ("POST", "/models/unload")):
            r = httpx.request(method, srv.url + path, json={"model": "alpha"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(srv.url + "/models", headers={"Authorization": "Bearer k3y"})
        assert r.status_code == 200 and {m["id"] for m in r.json()["data"]} == {"embedded", "alpha", "beta"}
        assert srv.manager.held_models() == []


def test_without_models_dir_the_server_is_as_before(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir)) as srv:
        health = httpx.get(srv.url + "/health")
        assert health.status_code == 503 and "pool" not in health.json()
        assert httpx.get(srv.url + "/v1/models").json() == {"object": "list", "data": []}
        r = httpx.post(srv.url + "/models/load", json={"model": "embedded"})
        assert r.status_code == 400 and "--models-dir" in r.json()["error"]["message"]
        with pytest.raises(openai.APIStatusError) as err:
            ask(oai(srv), "embedded")
        assert err.value.status_code == 503 and err.value.code == "no_model_loaded"
        assert srv.manager.held_models() == []


def test_a_full_pool_refuses_clearly_when_no_model_goes_idle_in_time(pool_max1):
    srv = pool_max1
    c = oai(srv)
    ask(c, "alpha")
    srv.manager.pool.wait_s = 0.5  # how long a load waits for room (120 s by default)
    try:
        stream = c.chat.completions.create(model="alpha", messages=LONG, max_tokens=1500, temperature=0, stream=True)
        chunks = iter(stream)
        text = ""
        while not text:
            text += next(chunks).choices[0].delta.content or ""
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=120,
                       json={"model": "beta", "messages": SHORT, "max_tokens": 4})
        assert r.status_code == 503 and r.json()["error"]["code"] == "pool_full"
        assert "--models-max" in r.json()["error"]["message"] and int(r.headers["Retry-After"]) >= 1
        assert statuses(srv.url)["alpha"] == "loaded"
        finish = None
        for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        assert finish in ("stop", "length") and len(text) > 20  # alpha's reply finished intact
    finally:
        srv.manager.pool.wait_s = 120.0
    assert statuses(srv.url)["beta"] == "unloaded"
    assert ask(c, "beta").model == "beta"  # room now that alpha is idle
