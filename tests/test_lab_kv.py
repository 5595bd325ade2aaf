"""KV-cache quantization as a lab dimension: ``llamacpp:Q8_0+kv:q4_0`` variants parse, load with
that cache type, are scored through it (KLD) and are sized by it (memory), checked against the KV
size llama.cpp itself reports when it allocates the cache."""

from __future__ import annotations

import contextlib
import ctypes
import io
import re

import pytest

from backends.files import gguf
from backends.base import KV_CACHE_TYPES, ModelSpec
from backends.errors import UnsupportedQuantization
from backends.registry import default_registry
from monitoring.model_memory import memory_line, model_memory
from optimization.lab import Lab, Variant, parse_variants, variant_menu
from tests.conftest import make_manager

KV_REPORT = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells.*K \((\w+)\).*V \((\w+)\)")


@pytest.fixture(scope="module")
def registry():
    return default_registry()


# --- fast: names ---------------------------------------------------------------------------------

def test_kv_variants_parse_and_their_labels_round_trip(registry):
    v = Variant.parse("llamacpp:Q4_K_M+kv:q8_0", registry)
    assert (v.backend, v.quantization, v.kv, v.label) == ("llamacpp", "Q4_K_M", "q8_0", "llamacpp:Q4_K_M+kv:q8_0")
    assert Variant.parse(" llamacpp:q8_0+KV:Q4_0 ", registry).label == "llamacpp:Q8_0+kv:q4_0"
    assert Variant.parse("llamacpp:Q8_0", registry).kv is None
    for t in KV_CACHE_TYPES:
        assert Variant.parse(f"llamacpp:F16+kv:{t}", registry).kv == t
    # a KV type makes another variant: both stay in one comparison
    assert len(parse_variants(["llamacpp:Q8_0", "llamacpp:Q8_0+kv:q8_0", "llamacpp:Q8_0+kv:q8_0"], registry)) == 2
    menu = variant_menu(registry)
    assert {"llamacpp:Q8_0+kv:q8_0", "llamacpp:Q8_0+kv:q4_0", "llamacpp:Q4_K_M+kv:q8_0"} <= set(menu)
    assert not any(m.startswith("transformers:") and "+kv:" in m for m in menu)
    assert all(Variant.parse(m, registry).label == m for m in menu)


def test_bad_kv_variants_are_refused_by_name(registry):
    with pytest.raises(UnsupportedQuantization, match=r"transformers backend has no KV cache type.*transformers:nf4"):
        Variant.parse("transformers:nf4+kv:q8_0", registry)
    with pytest.raises(UnsupportedQuantization, match=r"Unknown KV cache type 'q5_1'.*f16, q8_0, q4_0"):
        Variant.parse("llamacpp:Q8_0+kv:q5_1", registry)
    with pytest.raises(UnsupportedQuantization, match="Unknown KV cache type ''"):
        Variant.parse("llamacpp:Q8_0+kv:", registry)
    with pytest.raises(UnsupportedQuantization, match="Unknown quantization"):
        Variant.parse("llamacpp:Q9_9+kv:q8_0", registry)


def test_the_lab_loads_a_kv_variant_with_its_cache_type(tmp_path):
    base = ModelSpec(source="embedded", backend="llamacpp", cache_type="q8_0")  # the server's --cache-type q8_0
    lab = Lab(make_manager(cache_dir=tmp_path), base_spec=base)
    reg = lab.registry
    assert lab.spec("embedded", Variant.parse("llamacpp:Q8_0+kv:q4_0", reg), 2048).cache_type == "q4_0"
    assert lab.spec("embedded", Variant.parse("llamacpp:Q8_0+kv:f16", reg), 2048).cache_type == "f16"
    # without +kv: the server's --cache-type, as before
    assert lab.spec("embedded", Variant.parse("llamacpp:Q8_0", reg), 2048).cache_type == "q8_0"


def test_kv_bytes_per_element_are_ggmls_own():
    """The table the memory figure uses == ggml_type_size / ggml_blck_size of the engine's ggml."""
    import llama_cpp

    lib = ctypes.CDLL(str(next(p for p in llama_cpp.__path__) + "/lib/libggml-base.so"))
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_blck_size.restype = ctypes.c_int64
    for name in KV_CACHE_TYPES:
        t = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}")
        assert gguf.KV_BYTES_PER_ELEMENT[name] == lib.ggml_type_size(t) / lib.ggml_blck_size(t), name


def test_the_memory_line_names_a_quantized_kv_cache():
    d = {"backend": "llamacpp", "footprint_bytes": 200 * 2**20, "weights_bytes": 150 * 2**20,
         "kv_cache_bytes": 12 * 2**20, "kv_cache_type": "q4_0", "n_ctx": 2048, "parallel": 1}
    m = model_memory(d)
    assert m["kv_type"] == "q4_0" and "12.0 KV q4_0 (2048 ctx x 1 slot)" in memory_line(m)
    assert "KV (2048" in memory_line(model_memory(dict(d, kv_cache_type="f16")))


# --- slow: real loads, real scoring --------------------------------------------------------------

def _llama_cpp_kv_report(path, n_ctx: int, cache_type: str) -> tuple[float, int, str, str]:
    """(MiB, cells, K type, V type) from llama.cpp's own log line when it allocates the KV cache."""
    from backends.llamacpp.open import kv_cache_options, open_llama

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):  # llama-cpp-python's log callback prints to sys.stderr
        llm = open_llama(str(path), n_ctx=n_ctx, verbose=True,
                         **kv_cache_options(ModelSpec(source=str(path), backend="llamacpp", cache_type=cache_type)))
        llm.close()  # its verbose goodbye stays in the buffer too
    m = KV_REPORT.search(buf.getvalue())
    assert m, buf.getvalue()[-2000:]
    return float(m.group(1)), int(m.group(2)), m.group(3), m.group(4)


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx", [2048, 1000])  # 1000: llama.cpp rounds the context up (1024 cells)
def test_kv_bytes_match_what_llama_cpp_allocates(cache_dir, embedded_gguf, n_ctx):
    from backends.llamacpp.backend import LlamaCppBackend

    sizes = {}
    for cache_type in KV_CACHE_TYPES:
        b = LlamaCppBackend(cache_dir)
        info = b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=n_ctx, parallel=1, cache_type=cache_type))
        try:
            mem = model_memory(info)
        finally:
            b.unload()
        mib, cells, k, v = _llama_cpp_kv_report(embedded_gguf, n_ctx, cache_type)
        assert (k, v) == (cache_type, cache_type)
        assert mem["kv_type"] == info.details["kv_cache_type"] == cache_type
        # llama.cpp prints MiB with 2 decimals
        assert abs(mem["kv_bytes"] / 2**20 - mib) <= 0.006, (cache_type, mem["kv_bytes"] / 2**20, mib)
        assert info.footprint_bytes == mem["weights_bytes"] + mem["kv_bytes"]
        sizes[cache_type] = mem["kv_bytes"]
        print(f"\n{cache_type}: app {mem['kv_bytes'] / 2**20:.3f} MiB, llama.cpp {mib:.2f} MiB ({cells} cells)")
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_0"] > 0


@pytest.mark.slow
@pytest.mark.timeout(1500)  # four 2048-token scorings: ~2 min alone on 2 cores, far longer on a shared CPU
def test_kld_and_memory_follow_the_kv_cache_type(cache_dir):
    """Q8_0 weights, KV f16 / q8_0 / q4_0, against the F16 file over one 2048-token window: the KV
    cache's precision shows in KLD (q4_0 clearly worst), and in memory (f16 > q8_0 > q4_0)."""
    lab = Lab(make_manager(cache_dir=cache_dir))
    names = [f"llamacpp:Q8_0+kv:{t}" for t in KV_CACHE_TYPES]
    rows = {r.variant: r for r in lab.evaluate("embedded", names, reference="llamacpp:F16", max_tokens=2048,
                                               window=2048, decode_tokens=0)}
    print("\n" + "\n".join(f"{v:26s} KLD {r.kld_mean:.5f} p99 {r.kld_p99:.4f} top1 {100 * r.top1_agreement:.2f}% "
                           f"ppl {r.ppl:.3f} KV {r.memory['kv_mib']:.2f} MiB {r.memory['kv_type']}"
                           for v, r in rows.items()))
    f16, q8, q4 = (rows[n] for n in names)
    assert f16.tokens == q8.tokens == q4.tokens == rows["llamacpp:F16"].tokens > 2000
    assert f16.kld_mean <= q8.kld_mean * 1.05  # q8_0 KV within noise of f16 KV, or above it
    assert q8.kld_mean < q4.kld_mean and f16.kld_mean < q4.kld_mean
    assert q8.kld_mean < 2 * f16.kld_mean, "a q8_0 KV cache costs little next to the Q8_0 weights"
    assert q4.kld_mean > 3 * q8.kld_mean, "a q4_0 KV cache costs measurable quality"
    assert [r.memory["kv_type"] for r in (f16, q8, q4)] == list(KV_CACHE_TYPES)
    assert f16.memory["kv_bytes"] > q8.memory["kv_bytes"] > q4.memory["kv_bytes"]
    assert f16.footprint_mib > q8.footprint_mib > q4.footprint_mib
    assert f16.memory["weights_bytes"] == q8.memory["weights_bytes"] == q4.memory["weights_bytes"]


@pytest.mark.slow
def test_compare_with_a_kv_variant_through_gradio_client(client):
    result = client.predict("Name a colour.", ["llamacpp:Q8_0+kv:q4_0", "llamacpp:Q8_0"], "embedded", 12, 0.0, 0,
                            api_name="/compare")
    by = {r["variant"]: r for r in result}
    kv = by["llamacpp:Q8_0+kv:q4_0"]
    assert kv["done"] and kv["text"].strip() and kv["finish_reason"] in ("stop", "length")
    assert kv["memory"]["kv_type"] == "q4_0" and by["llamacpp:Q8_0"]["memory"]["kv_type"] == "f16"
    assert kv["memory"]["kv_bytes"] < by["llamacpp:Q8_0"]["memory"]["kv_bytes"]
    with pytest.raises(Exception, match="no KV cache type"):
        client.predict("Hi", ["transformers:nf4+kv:q8_0"], "embedded", 4, 0.0, 0, api_name="/compare")
    assert client.predict(api_name="/model_status"), "the server kept running"
