"""Ollama's per-request ``keep_alive`` on the model pool, with the real ollama client: 0 unloads the
model once its request ends, a duration unloads it after that long idle, a negative one keeps it
loaded; a load request (no messages / no prompt) loads a model, or with ``keep_alive: 0`` unloads
it; a malformed keep_alive is a 400 naming the field, and the server keeps serving."""

from __future__ import annotations

import json
import math
import shutil

import ollama
import pytest

from app import LiveServer
from backends.errors import InvalidRequest
from serving.ollama.convert import keep_alive_s
from tests.live_server import make_settings, wait_for

HI = [{"role": "user", "content": "Say hello."}]


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
def test_keep_alive_per_request_on_the_pool(tmp_path_factory, embedded_gguf, cache_dir):
    d = tmp_path_factory.mktemp("keepalive")
    shutil.copyfile(embedded_gguf, d / "alpha.gguf")
    shutil.copyfile(embedded_gguf, d / "beta.gguf")
    log = d / "requests.jsonl"
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=d, request_log=str(log))) as srv:
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
    events = [(r["event"], r["model"]) for r in map(json.loads, log.read_text().splitlines()) if "event" in r]
    assert ("model_idle_unload", "beta") in events and ("model_idle_unload", "alpha") in events
