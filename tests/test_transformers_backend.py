"""The transformers backend on a checkpoint derived from the embedded GGUF (real model, CPU)."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from backends.base import ChatRequest, ModelSpec, SamplingParams
from backends.errors import BackendError, UnsupportedQuantization
from backends.hf.backend import TransformersBackend, bnb_support
from tests.conftest import cancel_mid_stream, greedy, long_request

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def hf_fp32(cache_dir):
    b = TransformersBackend(cache_dir)
    b.load(ModelSpec(source="embedded", backend="transformers", quantization="fp32", parallel=1))
    yield b
    b.unload()


def collect(backend, request, cancel=None):
    deltas = list(backend.stream(request, cancel or threading.Event()))
    return "".join(d.text for d in deltas), deltas


def test_streamed_greedy_equals_non_streamed_generate(hf_fp32):
    request = greedy(32)
    text, deltas = collect(hf_fp32, request)
    model, tok = hf_fp32._model, hf_fp32._tok
    ids = hf_fp32.prompt_ids(request)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=32, do_sample=False)
    expected = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    assert text == expected
    assert text.strip()
    assert deltas[-1].prompt_tokens == len(ids)
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    assert sum(d.tokens for d in deltas) == sum(1 for t in out[0, len(ids):].tolist() if t not in eos)


def test_cancel_stops_generate_thread_within_a_second(hf_fp32):
    rest, took = cancel_mid_stream(hf_fp32)
    print(f"\ncancel -> generate() stopped: {took * 1000:.0f} ms")
    assert rest[-1].finish_reason == "cancelled"
    assert took < 1.0
    assert not any(t.name == "hf-generate" for t in threading.enumerate())


def test_consumer_closing_the_stream_stops_the_thread(hf_fp32):
    stream = hf_fp32.stream(long_request(), threading.Event())
    next(stream)
    t0 = time.perf_counter()
    stream.close()  # what Gradio does when a client disconnects
    assert time.perf_counter() - t0 < 1.0
    assert not any(t.name == "hf-generate" for t in threading.enumerate())


def test_exception_in_generate_reaches_the_caller(hf_fp32):
    bad = ChatRequest(greedy().messages, SamplingParams(max_new_tokens=4, temperature=0.0))
    model = hf_fp32._model
    original = model.generate

    def boom(**kwargs):
        raise RuntimeError("kaboom in the generate thread")

    model.generate = boom
    try:
        with pytest.raises(BackendError, match="kaboom"):
            collect(hf_fp32, bad)
    finally:
        model.generate = original
    assert collect(hf_fp32, greedy(4))[0]


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_bitsandbytes_quantizations_load_and_answer_on_cpu(cache_dir, quant):
    if not bnb_support()[quant]:
        pytest.skip(f"bitsandbytes {quant} unavailable here")
    b = TransformersBackend(cache_dir)
    info = b.load(ModelSpec(source="embedded", backend="transformers", quantization=quant, parallel=1))
    try:
        text, deltas = collect(b, greedy(12))
        print(f"\n{quant}: footprint {info.footprint_bytes / 2**20:.0f} MiB, load {info.load_seconds:.1f} s: {text!r}")
        assert info.quantization == quant
        assert text.strip()
    finally:
        b.unload()


def test_unknown_quantization_is_rejected_before_loading(cache_dir):
    with pytest.raises(UnsupportedQuantization, match="Unknown quantization"):
        TransformersBackend(cache_dir).load(ModelSpec(source="embedded", backend="transformers", quantization="int3"))


@pytest.mark.parametrize("parallel", [1, 4], ids=["one-slot", "continuous-batching"])
def test_load_unload_load_returns_memory(cache_dir, parallel):
    """bf16 forces a real copy of the weights (fp32 safetensors would be mmap'd lazily)."""
    proc = psutil.Process()
    spec = ModelSpec(source="embedded", backend="transformers", quantization="bf16", parallel=parallel)
    warm = TransformersBackend(cache_dir)  # derive the checkpoint and import everything first
    warm.load(spec)
    warm.unload()
    rss0 = proc.memory_info().rss
    b = TransformersBackend(cache_dir)
    info = b.load(spec)
    assert collect(b, greedy(4))[0]
    rss_loaded = proc.memory_info().rss
    b.unload()
    rss_unloaded = proc.memory_info().rss
    b.load(spec)
    assert collect(b, greedy(4))[0]
    b.unload()
    print(f"\nRSS MiB: before {rss0 / 2**20:.0f}, loaded {rss_loaded / 2**20:.0f}, unloaded {rss_unloaded / 2**20:.0f};"
          f" footprint {info.footprint_bytes / 2**20:.0f} MiB")
    assert info.footprint_bytes > 200 * 2**20  # 135M params in bf16
    assert rss_loaded - rss0 > 150 * 2**20
    assert rss_unloaded - rss0 < 0.5 * (rss_loaded - rss0)
