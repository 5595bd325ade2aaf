"""The llama.cpp backend on the embedded SmolLM2 GGUF: real model, no mocks."""

from __future__ import annotations

import threading

import psutil
import pytest

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams
from backends.errors import ContextLengthExceeded, ModelLoadError, ModelNotFound
from backends.llamacpp.backend import LlamaCppBackend
from tests.conftest import cancel_mid_stream, greedy


def collect(backend, request, cancel=None):
    deltas = list(backend.stream(request, cancel or threading.Event()))
    return "".join(d.text for d in deltas), deltas


def test_streamed_greedy_equals_raw_non_streamed_completion(llama_backend):
    """The invariant that catches streaming bugs: our streamed text == llama-cpp-python's own
    non-streamed completion on the same prompt tokens."""
    request = greedy(48)
    text, deltas = collect(llama_backend, request)
    tokens = llama_backend.prompt_tokens(request)
    raw = llama_backend._llm.create_completion(tokens, max_tokens=48, temperature=0.0, top_k=40, top_p=0.95,
                                               min_p=0.0, repeat_penalty=1.0)
    assert text == raw["choices"][0]["text"]
    assert text.strip(), "the model said nothing"
    final = deltas[-1]
    assert final.finish_reason in ("stop", "length")
    assert final.prompt_tokens == len(tokens)
    assert sum(d.tokens for d in deltas) == raw["usage"]["completion_tokens"]


def test_greedy_is_deterministic_and_seeded_sampling_repeats(llama_backend):
    assert collect(llama_backend, greedy(24))[0] == collect(llama_backend, greedy(24))[0]
    sampled = ChatRequest(greedy().messages, SamplingParams(max_new_tokens=24, temperature=1.0, seed=1234))
    assert collect(llama_backend, sampled)[0] == collect(llama_backend, sampled)[0]


def test_multibyte_characters_survive_streaming(llama_backend):
    request = ChatRequest((Message("user", "Repeat exactly: héllo wörld 日本語 ✓"),),
                          SamplingParams(max_new_tokens=40, temperature=0.0))
    text, deltas = collect(llama_backend, request)
    assert "\ufffd" not in text
    assert all("\ufffd" not in d.text for d in deltas)


def test_cancel_stops_generation_within_a_second(llama_backend):
    rest, took = cancel_mid_stream(llama_backend, after=5)
    print(f"\ncancel -> stop: {took * 1000:.1f} ms")
    assert rest[-1].finish_reason == "cancelled"
    assert sum(d.tokens for d in rest) <= 1
    assert took < 1.0


def test_prompt_longer_than_context_is_a_clear_error(llama_backend):
    long = ChatRequest((Message("user", "word " * 5000),), SamplingParams(max_new_tokens=8))
    with pytest.raises(ContextLengthExceeded, match="context"):
        list(llama_backend.stream(long, threading.Event()))
    # the model still answers afterwards
    assert collect(llama_backend, greedy(8))[0]


@pytest.mark.parametrize("parallel", [1, 4], ids=["one-slot", "batched"])
def test_load_unload_load_returns_memory(cache_dir, parallel):
    proc = psutil.Process()
    spec = ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048, parallel=parallel)
    rss0 = proc.memory_info().rss
    b = LlamaCppBackend(cache_dir)
    info = b.load(spec)
    collect(b, greedy(8))  # touch the weights
    rss_loaded = proc.memory_info().rss
    b.unload()
    rss_unloaded = proc.memory_info().rss
    b2 = LlamaCppBackend(cache_dir)
    b2.load(spec)
    text, _ = collect(b2, greedy(8))
    b2.unload()
    print(f"\nRSS MiB: before {rss0 / 2**20:.0f}, loaded {rss_loaded / 2**20:.0f}, "
          f"unloaded {rss_unloaded / 2**20:.0f}; footprint {info.footprint_bytes / 2**20:.0f} MiB")
    assert text
    assert info.footprint_bytes > 50 * 2**20
    grown = rss_loaded - rss0
    assert rss_unloaded - rss0 < 0.5 * grown, "unload kept most of the model's memory"


def test_gguf_variant_is_made_from_the_embedded_model(cache_dir):
    b = LlamaCppBackend(cache_dir)
    info = b.load(ModelSpec(source="embedded", backend="llamacpp", quantization="Q8_0", n_ctx=1024, parallel=1))
    try:
        assert info.quantization == "Q8_0"
        assert str(cache_dir) in info.source
        assert collect(b, greedy(8))[0]
    finally:
        b.unload()


def test_bad_sources_are_clear_errors(tmp_path, cache_dir):
    with pytest.raises(ModelNotFound, match="does not exist"):
        LlamaCppBackend(cache_dir).load(ModelSpec(source=str(tmp_path / "nope.gguf"), backend="llamacpp"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        LlamaCppBackend(cache_dir).load(ModelSpec(source=str(junk), backend="llamacpp"))


def test_gpu_layers_requested_without_gpu_degrade_to_cpu(cache_dir):
    b = LlamaCppBackend(cache_dir)
    info = b.load(ModelSpec(source="embedded", backend="llamacpp", n_gpu_layers=-1, n_ctx=512, parallel=1))
    try:
        if info.details["gpu_offload_supported"]:
            pytest.skip("this llama.cpp build has GPU offload: covered on the GPU machine")
        assert info.device == "cpu"
        assert "no GPU support" in info.details["warning"]
        assert collect(b, greedy(4))[0]
    finally:
        b.unload()
