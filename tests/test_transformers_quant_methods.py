"""The transformers backend's torchao and optimum-quanto quantizations on the test checkpoint (derived
from the embedded GGUF), on this CPU: each loads, streams the same greedy text as a plain generate(),
holds fewer weight bytes than fp32, scores logits close to fp32 (int8 closer than int4), shows in the
lab's variant menu and runs through Compare; a method whose kernels need CUDA says so."""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import pytest

from backends.base import ModelSpec
from backends.errors import UnsupportedQuantization
from backends.registry import default_registry
from backends.hf.backend import TransformersBackend
from backends.hf.quant import METHODS, grad_mode
from monitoring.model_memory import model_memory
from optimization.quality import log_softmax, stdlib_text
from tests.conftest import greedy

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow

CPU_METHODS = [q for q, m in METHODS.items() if m.cpu]
GPU_ONLY = [q for q, m in METHODS.items() if not m.cpu]
_held: dict[str, TransformersBackend] = {}


def _load(cache_dir, quant: str) -> tuple[TransformersBackend, object]:
    """One backend per quantization for this module (loading is the slow part)."""
    if quant not in _held:
        b = TransformersBackend(cache_dir)
        info = b.load(ModelSpec(source="embedded", backend="transformers", quantization=quant, parallel=1))
        _held[quant] = (b, info)
    return _held[quant]


@pytest.fixture(scope="module")
def loaded(cache_dir):
    yield lambda quant: _load(cache_dir, quant)
    for b, _ in _held.values():
        b.unload()
    _held.clear()


@pytest.fixture(scope="module")
def eval_ids(loaded):
    b, _ = loaded("fp32")
    return b.tokenize(stdlib_text(20_000))[:192]


def _kld(loaded, eval_ids, quant: str) -> tuple[float, float]:
    """(mean KLD(fp32 || quant), top-1 agreement) over the evaluation tokens."""
    ref = log_softmax(loaded("fp32")[0].logits(eval_ids))
    got = log_softmax(loaded(quant)[0].logits(eval_ids))
    kld = (np.exp(ref) * (ref - got)).sum(-1)
    return float(kld.mean()), float((ref.argmax(-1) == got.argmax(-1)).mean())


@pytest.mark.parametrize("quant", CPU_METHODS)
def test_method_loads_and_streams_the_same_greedy_text_as_generate(loaded, quant):
    b, info = loaded(quant)
    assert info.quantization == quant
    request = greedy(24)
    text = "".join(d.text for d in b.stream(request, threading.Event()))
    model, tok = b._model, b._tok
    ids = b.prompt_ids(request)
    with grad_mode(quant):
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=24, do_sample=False)
    assert text == tok.decode(out[0, len(ids):], skip_special_tokens=True)
    assert len(text.split()) >= 3


@pytest.mark.parametrize("quant", CPU_METHODS)
def test_method_holds_fewer_weight_bytes_than_fp32(loaded, quant):
    _, fp32 = loaded("fp32")
    _, info = loaded(quant)
    w, w32 = model_memory(info)["weights_bytes"], model_memory(fp32)["weights_bytes"]
    # the embeddings (a third of this model) stay float: int8 holds well under fp32, int4 under int8
    assert w < 0.75 * w32
    assert info.footprint_bytes == w  # parallel=1: no KV allocated up front
    if quant.endswith("int4"):
        assert w < model_memory(loaded(quant.replace("int4", "int8"))[1])["weights_bytes"]


@pytest.mark.parametrize("quant", CPU_METHODS)
def test_method_logits_are_close_to_fp32_but_not_equal(loaded, eval_ids, quant):
    kld, top1 = _kld(loaded, eval_ids, quant)
    print(f"\n{quant}: KLD {kld:.5f}, top-1 {top1:.1%}")
    assert 0 < kld < (1.0 if quant.endswith("int4") else 0.05)
    assert top1 > (0.6 if quant.endswith("int4") else 0.9)


@pytest.mark.parametrize("family", sorted({q.rsplit("-", 1)[0] for q in CPU_METHODS
                                           if q.endswith("int4") and q.replace("int4", "int8") in CPU_METHODS}))
def test_int8_is_closer_to_fp32_than_int4(loaded, eval_ids, family):
    assert _kld(loaded, eval_ids, f"{family}-int8")[0] < _kld(loaded, eval_ids, f"{family}-int4")[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA path runs there")
@pytest.mark.parametrize("quant", GPU_ONLY)
def test_gpu_only_method_on_cpu_is_a_clear_typed_error(cache_dir, quant):
    b = TransformersBackend(cache_dir)
    with pytest.raises(UnsupportedQuantization, match="needs a CUDA GPU"):
        b.load(ModelSpec(source="embedded", backend="transformers", quantization=quant, parallel=1))


def test_methods_are_in_the_menus_and_provenance_says_what_they_are(live_app):
    reg = default_registry()
    assert set(METHODS) <= set(reg.menu("transformers"))
    assert {f"transformers:{q}" for q in METHODS} <= set(reg.variant_menu())
    config = json.dumps(httpx.get(live_app.url + "/config", timeout=30).json())
    assert all(f"transformers:{q}" in config for q in METHODS)  # the lab's variant dropdowns
    assert all(q in config for q in METHODS)  # the Model tab's quantization dropdown


def test_compare_runs_the_methods_through_gradio_client(client, live_app):
    variants = ["transformers:torchao-int8wo", "transformers:quanto-int4"]
    final = client.predict("Name three colours.", variants, "embedded", 12, 0.0, 0, api_name="/compare")
    assert [s["variant"] for s in final] == variants
    assert all(s["done"] and s["text"].strip() and s["stats"]["completion_tokens"] > 0 for s in final)
    assert all(s["provenance"]["method"] == METHODS[v.split(":")[1]].description for s, v in zip(final, variants))
    assert final[1]["memory"]["weights_mib"] < final[0]["memory"]["weights_mib"]  # int4 < int8
    with pytest.raises(Exception, match="needs a CUDA GPU"):
        client.predict("hi", ["transformers:torchao-int4wo"], "embedded", 4, 0.0, 0, api_name="/compare")
    assert httpx.get(live_app.url + "/health").status_code == 200  # the served model is still there


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA path runs there")
def test_load_model_refuses_a_gpu_only_method_and_keeps_the_served_model(client, live_app):
    before = httpx.get(live_app.url + "/health").json()["model"]
    with pytest.raises(Exception, match="needs a CUDA GPU"):
        client.predict("embedded", "transformers", "torchao-int4wo", api_name="/load_model")
    assert httpx.get(live_app.url + "/health").json()["model"] == before
