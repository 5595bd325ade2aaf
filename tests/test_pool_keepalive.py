"""Ollama's per-request ``keep_alive`` on the model pool, with the real ollama client: 0 unloads the
model once its request ends, a duration unloads it after that long idle, a negative one keeps it
loaded; a load request (no messages / no prompt) loads a model, or with ``keep_alive: 0`` unloads
it; a malformed keep_alive is a 400 naming the field, and the server keeps serving. On the same
server: models in the Hugging Face cache are pool names too (their repo id), listed in GET /v1/models
and answered by name through the openai client, loaded from the cache (offline)."""

from __future__ import annotations

import json
import math
import os
import shutil

import httpx
import ollama
import openai
import pytest

from app import LiveServer
from backends.errors import InvalidRequest
from serving.ollama.convert import keep_alive_s
from tests.live_server import make_settings, wait_for

HI = [{"role": "user", "content": "Say hello."}]

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_repo(hub: object, repo_id: str, gguf) -> None:
    """A model repo as huggingface_hub caches it: refs/main -> snapshots/<commit>/<file> (-> blobs)."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    blob = repo / "blobs" / "tiny-blob"
    shutil.copyfile(gguf, blob)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "tiny-Q4_1.gguf").symlink_to(blob)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, embedded_gguf, cache_dir):
    d = tmp_path_factory.mktemp("keepalive")
    shutil.copyfile(embedded_gguf, d / "alpha.gguf")
    shutil.copyfile(embedded_gguf, d / "beta.gguf")
    hub = tmp_path_factory.mktemp("hub")
    fake_hub_repo(hub, "test-org/tiny-gguf", embedded_gguf)
    saved = {k: os.environ.get(k) for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    os.environ.update(HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1")
    try:
        with LiveServer(make_settings(cache_dir=cache_dir, models_dir=d, request_log=str(d / "requests.jsonl"))) as srv:
            yield srv
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_keep_alive_reads_seconds_and_go_durations():
    assert keep_alive_s(None) is None and keep_alive_s("") is None
    assert keep_alive_s(0) == 0 and keep_alive_s("0") == 0 and keep_alive_s(30) == 30
    assert keep_alive_s("5m") == 300 and keep_alive_s("1h30m") == 5400 and keep_alive_s("1.5s") == 1.5
    assert keep_alive_s("250ms") == 0.25 and keep_alive_s("90") == 90
    assert math.isinf(keep_alive_s(-1)) and math.isinf(keep_alive_s("-1m"))
    for bad in ("soon", "5 minutes", "m5", "5x", "1h-2m", True):
        with pytest.raises(InvalidRequest, match="keep_alive"):
            keep_alive_s(bad)


def loaded(lama: ollama.Client) -> set[str]:
    return {m.model for m in lama.ps().models}


@pytest.mark.slow
def test_keep_alive_per_request_on_the_pool(srv):
    log = srv.settings.request_log
    lama = ollama.Client(host=srv.url, timeout=300)
    # kept for ever (negative), then beta for 1 s: beta goes, alpha stays
    assert lama.chat(model="alpha", messages=HI, keep_alive=-1, options={"num_predict": 2}).done
    assert lama.chat(model="beta", messages=HI, keep_alive="1s", options={"num_predict": 2}).done
    wait_for(lambda: "beta:latest" not in loaded(lama), 60, "beta unloaded 1 s after its request")
    assert loaded(lama) == {"alpha:latest"}

    # 0: unloaded as soon as the request ends
    assert lama.chat(model="alpha", messages=HI, keep_alive=0, options={"num_predict": 2}).message.content
    wait_for(lambda: loaded(lama) == set(), 60, "alpha unloaded after its request")

    # a load request loads (and keeps it), keep_alive 0 unloads it now
    assert lama.generate(model="beta", keep_alive="5m").done_reason == "load"
    assert loaded(lama) == {"beta:latest"}
    assert lama.generate(model="beta", keep_alive=0).done_reason == "unload"
    assert loaded(lama) == set()

    with pytest.raises(ollama.ResponseError, match="keep_alive") as bad:
        lama.chat(model="alpha", messages=HI, keep_alive="soon")
    assert bad.value.status_code == 400
    assert lama.chat(model="alpha", messages=HI, options={"num_predict": 2}).done  # still serving
    with open(log, encoding="utf-8") as f:
        events = [(r["event"], r["model"]) for r in map(json.loads, f.read().splitlines()) if "event" in r]
    assert ("model_idle_unload", "beta") in events and ("model_idle_unload", "alpha") in events


@pytest.mark.slow
def test_a_hub_cache_repo_is_served_by_its_repo_id(srv):
    rows = {m["id"]: m for m in httpx.get(srv.url + "/v1/models").json()["data"]}
    assert rows["test-org/tiny-gguf"]["status"] == "unloaded" and rows["test-org/tiny-gguf"]["kind"] == "hub"
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    reply = c.chat.completions.create(model="test-org/tiny-gguf", messages=[{"role": "user", "content": "Hi"}],
                                      max_tokens=2)
    assert reply.model == "test-org/tiny-gguf"
    rows = {m["id"]: m for m in httpx.get(srv.url + "/v1/models").json()["data"]}
    assert rows["test-org/tiny-gguf"]["status"] == "loaded" and rows["test-org/tiny-gguf"]["memory_mib"] > 0
    with pytest.raises(openai.NotFoundError):  # a repo not in the cache is no name here
        c.chat.completions.create(model="test-org/absent", messages=[{"role": "user", "content": "Hi"}])
