"""The lab tells the truth: where each variant comes from, one memory figure per loaded variant in
every place that shows it, and greedy Compare runs that repeat exactly (real embedded model)."""

from __future__ import annotations

import pytest

from backends.files import gguf
from backends.files.provenance import provenance
from monitoring.model_memory import model_memory
from tests.conftest import make_manager, make_services


@pytest.fixture(scope="module")
def services(cache_dir):
    h = make_services(make_manager(cache_dir=cache_dir))
    yield h
    h.release_lab()


def test_a_q8_0_made_from_the_q4_1_says_it_is_already_quantized_and_has_more_bits(embedded_gguf, cache_dir):
    q8 = gguf.gguf_variant(embedded_gguf, "Q8_0", cache_dir)
    p = provenance(q8, "Q8_0")  # no source given: read from the record kept beside the variants
    assert p["source_name"] == embedded_gguf.name and p["source_type"] == "Q4_1" and p["already_quantized"]
    assert "already quantized" in p["note"] and "dequantized Q4_1, not the original weights" in p["note"]
    assert p["warning"] and "more bits" in p["warning"] and "Q4_1" in p["warning"]
    assert p["bpw"] > p["source_bpw"] > 4.5
    # the F16 the variants are made from is itself no better than the Q4_1 it was dequantized from
    f16 = provenance(gguf.gguf_variant(embedded_gguf, "F16", cache_dir), "F16")
    assert f16["already_quantized"] and "dequantized Q4_1" in f16["note"] and f16["bpw"] == 16.0


def test_tensor_summary_reads_types_and_measured_bpw_from_the_header(embedded_gguf, cache_dir):
    for path in (embedded_gguf, gguf.gguf_variant(embedded_gguf, "Q4_K_M", cache_dir)):
        s = gguf.tensor_summary(path)
        assert sum(s["types"].values()) == s["n_tensors"] == 272
        assert 134_000_000 < s["n_params"] < 136_000_000
        size = path.stat().st_size
        assert 0.97 * size < s["tensor_bytes"] < size, "tensor data is nearly the whole file, never more"
        assert s["bpw"] == round(s["tensor_bytes"] * 8 / s["n_params"], 2)
    q4km = gguf.tensor_summary(gguf.gguf_variant(embedded_gguf, "Q4_K_M", cache_dir))
    # rows of 576 are no multiple of 256: most tensors fall back from q4_K to another type
    assert "q4_K" in q4km["types"] and q4km["types"]["q4_K"] < q4km["n_tensors"] / 2
    assert set(q4km["types"]) - {"q4_K", "f32"}
    assert list(q4km["types"].values()) == sorted(q4km["types"].values(), reverse=True)


def test_memory_is_one_figure_in_stats_compare_evaluate_and_model_status(services):
    final = list(services.compare("Hi", ["llamacpp:Q8_0"], "embedded", 4, 0.0, 0))[-1]
    pane = final[0]
    lab_models = services.stats()["lab_models"]
    held = [m for m in lab_models if m["quantization"] == "Q8_0"]
    assert len(held) == 1
    rows = services.evaluate(["llamacpp:Q8_0"], "", 128, "embedded", "llamacpp:Q4_K_M", 64)
    row = next(r for r in rows if r["variant"] == "llamacpp:Q8_0")
    status_held = [m for m in services.model_status()["lab_models"] if m["quantization"] == "Q8_0"]
    mem = pane["memory"]
    assert mem == held[0]["memory"] == row["memory"] == status_held[0]["memory"]
    assert pane["footprint_mib"] == row["footprint_mib"] == mem["total_mib"]
    assert mem["total_bytes"] == mem["weights_bytes"] + mem["kv_bytes"] + mem["overhead_bytes"]
    assert mem["n_ctx"] == 2048 and mem["slots"] == 1
    # KV: 2 (K, V) x 30 layers x 3 KV heads x 64 dims x 2048 tokens x f16
    assert mem["kv_bytes"] == 2 * 30 * 3 * 64 * 2048 * 2
    assert 130 < mem["weights_mib"] < 140, "Q8_0 of 135M parameters at 8.5 bpw"
    # provenance travels with the row and the pane alike
    assert pane["provenance"]["source_type"] == row["source_type"] == "Q4_1"
    assert "already quantized" in row["note"] and row["warning"]
    assert row["tensors"].startswith("Q8_0: 211 q8_0, 61 f32")


def test_the_chat_models_memory_is_the_same_in_status_and_stats(cache_dir):
    from backends.base import ModelSpec

    manager = make_manager(cache_dir=cache_dir)
    h = make_services(manager)
    manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=2))
    try:
        status, stats = h.model_status()["model"], h.stats()["model"]
        assert status["memory"] == stats["memory"] == model_memory(manager.current)
        assert status["memory"]["kv_bytes"] == 2 * 30 * 3 * 64 * 512 * 2 * 2  # 512 ctx x 2 slots
        assert status["provenance"]["note"].startswith(f"{manager.current.name}.gguf as given (Q4_1")
    finally:
        manager.unload()


def test_five_greedy_compares_give_the_same_texts_and_finish_reasons_whatever_ran_before(services):
    variants = ["llamacpp:Q8_0", "llamacpp:Q4_0"]
    runs = []
    for i in range(5):
        if i == 2:  # something else in between: another prompt on the same pooled variants
            list(services.compare("Count to five.", variants, "embedded", 12, 0.0, 0))
        final = list(services.compare("Say hi in three words.", variants, "embedded", 24, 0.0, 0))[-1]
        runs.append([(p["text"], p["finish_reason"], p["stats"]["completion_tokens"]) for p in final])
    assert all(r == runs[0] for r in runs), runs
    assert all(reason in ("stop", "length") for _, reason, _ in runs[0])
    assert all(text.strip() for text, _, _ in runs[0])


def test_a_seeded_sampled_compare_repeats_too(services):
    texts = {tuple(p["text"] for p in list(services.compare("Tell me a colour.", ["llamacpp:Q8_0"], "embedded",
                                                              16, 0.9, 42))[-1]) for _ in range(3)}
    assert len(texts) == 1
