"""Each option is declared once (backends/options.py) and every surface follows the declaration: a
sampler added there and named by the backend that implements it reaches the Gradio API (parameter,
description), the UI, /v1 and the bounds check, and every other backend refuses it by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends.base import ChatRequest, Message, SamplingParams
from backends.errors import InvalidRequest
from backends.options import LOADER, SAMPLERS, SAMPLING
from backends.registry import default_registry

ROOT = Path(__file__).resolve().parent.parent

# A fresh interpreter (the declarations are read when the modules are imported) where a new sampler
# is declared the way an edit of backends/options.py would, and one backend implements it; then the
# real app with that backend and one without, through gradio_client and /v1.
NEW_SAMPLER = r'''
import json, threading, time
import httpx
import backends.options as options

NEW = options.Option("top_n_sigma", float, -1.0, "keep tokens within n standard deviations of the top logit "
                     "(-1 = off)", low=-1.0, high=10.0, label="Top n sigma", ui=(-1.0, 5.0, 0.1))
options.SAMPLING = (*options.SAMPLING, NEW)
options.SAMPLERS = (*options.SAMPLERS, NEW)
options.BY_NAME[NEW.name] = NEW

import uvicorn
from gradio_client import Client

from app import create_app, server_config
from backends.base import ModelSpec, TextDelta
from backends.registry import BackendRegistry
from tests.conftest import make_manager
from tests.fakes import FakeBackend, FakeScript
from tests.live_server import make_settings


class SigmaBackend(FakeBackend):
    """The backend that implements it: declares it beside its capabilities and reads it."""
    name = "sigma"
    samplers = frozenset({"top_n_sigma"})

    def __init__(self, cache_dir=None):
        super().__init__(FakeScript(), cache_dir)

    def stream(self, request, cancel):
        yield TextDelta(f"sigma={request.params.top_n_sigma}", tokens=1)
        yield TextDelta("", finish_reason="stop", prompt_tokens=7)


class PlainBackend(SigmaBackend):
    name = "plain"
    samplers = frozenset()


manager = make_manager(registry=BackendRegistry([SigmaBackend, PlainBackend]))
settings = make_settings()
app = create_app(settings, manager)
server = uvicorn.Server(server_config(app, settings, host="127.0.0.1", timeout_graceful_shutdown=3))
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.05)
url = f"http://127.0.0.1:{settings.port}"
seen = {}
try:
    manager.load(ModelSpec(source="m", backend="sigma"))
    params = httpx.get(url + "/gradio_api/info").json()["named_endpoints"]["/chat"]["parameters"]
    seen["chat_params"] = [p["parameter_name"] for p in params]
    seen["description"] = params[-1]["python_type"]["description"]
    seen["ui"] = "Top n sigma" in httpx.get(url + "/config").text
    client = Client(url, verbose=False)
    core = ("", 8, 0.0, 1.0, 0, 1.0, 0)
    seen["chat"] = client.predict("hi", [], *core, top_n_sigma=2.5, api_name="/chat")[0]
    seen["nine_args"] = client.predict("hi", [], *core, api_name="/chat")[0]
    try:
        client.predict("hi", [], *core, top_n_sigma=11, api_name="/chat")
    except Exception as exc:
        seen["chat_out_of_bounds"] = str(exc)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_n_sigma": 2.5}
    r = httpx.post(url + "/v1/chat/completions", json=body)
    seen["v1"] = r.json().get("choices", [{}])[0].get("message", {}).get("content")
    r = httpx.post(url + "/v1/chat/completions", json={**body, "top_n_sigma": 11})
    seen["v1_out_of_bounds"] = [r.status_code, r.json().get("error", {}).get("param")]
    manager.load(ModelSpec(source="m", backend="plain"))
    try:
        client.predict("hi", [], *core, top_n_sigma=2.5, api_name="/chat")
    except Exception as exc:
        seen["refused"] = str(exc)
    r = httpx.post(url + "/v1/chat/completions", json={**body, "model": "m"})
    seen["v1_refused"] = [r.status_code, r.json().get("error", {}).get("param")]
    seen["v1_neutral"] = httpx.post(url + "/v1/chat/completions", json={**body, "top_n_sigma": -1.0}).status_code
    client.close()
finally:
    manager.close()
    server.should_exit = True
print("SEEN " + json.dumps(seen))
'''


@pytest.mark.slow
def test_a_new_sampler_declared_once_reaches_every_surface_and_other_backends_refuse_it():
    out = subprocess.run([sys.executable, "-c", NEW_SAMPLER], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stdout.splitlines() if line.startswith("SEEN ")]
    assert lines, out.stderr[-3000:]
    seen = json.loads(lines[-1][5:])
    # the Gradio API: a new last parameter (positional calls keep working), described from the declaration
    params = seen["chat_params"]
    assert params[-1] == "top_n_sigma" and params.index("stop") < params.index("enable_thinking") < params.index("files")
    assert seen["description"].startswith("Keep tokens within n standard deviations")
    assert seen["ui"], "the UI has a control for it"
    assert seen["chat"] == "sigma=2.5" and seen["v1"] == "sigma=2.5"
    assert seen["nine_args"] == "sigma=-1.0", "left out, it is its default"
    assert "top_n_sigma" in seen["chat_out_of_bounds"]
    assert seen["v1_out_of_bounds"] == [400, "top_n_sigma"]
    # a backend that does not declare it refuses it by name, and takes the neutral value
    assert "top_n_sigma" in seen["refused"] and "plain" in seen["refused"]
    assert seen["v1_refused"] == [400, "top_n_sigma"]
    assert seen["v1_neutral"] == 200


def test_every_declared_sampler_is_checked_against_its_bounds_where_the_params_are_made():
    for o in SAMPLERS:
        if o.low is None:
            continue
        below = o.low - (0 if o.low_open else 1)
        with pytest.raises(InvalidRequest) as err:
            SamplingParams(**{o.name: below})
        assert err.value.param == o.name and o.name in str(err.value)
        if o.high is not None:
            with pytest.raises(InvalidRequest) as err:
                SamplingParams(**{o.name: o.high + 1})
            assert err.value.param == o.name
            assert getattr(SamplingParams(**{o.name: o.high}), o.name) == o.high
    with pytest.raises(InvalidRequest) as err:
        SamplingParams(min_p=float("nan"))
    assert err.value.param == "min_p"


def test_each_backend_declares_only_declared_samplers_and_refuses_the_others_by_name():
    registry = default_registry()
    optional = {o.name for o in SAMPLERS if not o.core and o.tunes is None}
    honoured = set()
    for name in registry.names():
        cls = registry.get(name)
        assert cls.samplers <= optional, f"{name} declares samplers that are not declared options"
        honoured |= cls.samplers
        for o in SAMPLERS:
            if o.name not in optional or o.name in cls.samplers:
                continue
            away = next(v for v in (o.neutral_value + 1, o.neutral_value - 0.5) if o.out_of_bounds(v) is None)
            with pytest.raises(InvalidRequest) as err:
                cls.check_request(ChatRequest((Message("user", "hi"),), SamplingParams(**{o.name: away})))
            assert err.value.param == o.name and name in str(err.value)
    assert honoured == optional, f"declared but honoured by no backend: {optional - honoured}"


def test_the_declarations_keep_the_stable_api_order():
    """The Gradio API's parameter order is the declaration order (DESIGN.md section 2): the ones
    there today stay where they are; new ones may only follow."""
    chat = [o.name for o in SAMPLING if o.gradio]
    assert chat[:19] == ["max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "min_p",
                         "typical_p", "presence_penalty", "frequency_penalty", "dry_multiplier", "xtc_probability",
                         "xtc_threshold", "mirostat", "mirostat_tau", "mirostat_eta", "no_repeat_ngram_size", "stop",
                         "enable_thinking"]
    assert [o.name for o in LOADER][:9] == ["n_ctx", "parallel", "n_threads", "n_gpu_layers", "cache_type",
                                            "flash_attn", "device_map", "compute_dtype", "double_quant"]


def test_one_character_limit_check_words_every_entry_point_alike():
    from serving.requests import RequestLimits, build_request, check_chars, completion_request

    limits = RequestLimits(max_prompt_chars=10)
    with pytest.raises(InvalidRequest) as err:
        build_request("x" * 11, [], "", 8, 0.0, 1.0, 0, 1.0, 0, limits=limits)
    assert str(err.value) == "The message is 11 characters long; this server accepts at most 10 (--max-prompt-chars)."
    with pytest.raises(InvalidRequest) as err:
        completion_request("x" * 12, SamplingParams(), limits=limits)
    assert err.value.param == "prompt" and "12 characters long" in str(err.value)
    with pytest.raises(InvalidRequest) as err:
        build_request("hi", [{"role": "user", "content": "y" * 9}], "", 8, 0.0, 1.0, 0, 1.0, 0, limits=limits)
    assert err.value.param == "messages" and "The conversation is 11 characters long" in str(err.value)
    check_chars(10, "input", "input", limits)  # at the limit: accepted
