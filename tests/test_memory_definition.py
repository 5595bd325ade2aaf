"""The one memory definition (weights + KV + overhead = total) read from what each backend reports."""

from __future__ import annotations

from backends.base import LoadedModel
from monitoring.model_memory import OVERHEAD_BYTES, memory_line, model_memory

MIB = 2**20


def info(backend: str, footprint: int, **details) -> LoadedModel:
    return LoadedModel(name="m", backend=backend, quantization="Q8_0", source="/m.gguf", context_length=2048,
                       footprint_bytes=footprint, load_seconds=1.0, device="cpu", details=details)


def test_llamacpp_memory_splits_its_footprint_into_weights_and_kv():
    m = model_memory(info("llamacpp", 181 * MIB, weights_bytes=136 * MIB, n_ctx=2048, parallel=1))
    assert (m["weights_mib"], m["kv_mib"], m["n_ctx"], m["slots"]) == (136.0, 45.0, 2048, 1)
    assert m["total_bytes"] == 181 * MIB + OVERHEAD_BYTES["llamacpp"]
    assert memory_line(m) == "229.0 MiB = 136.0 weights + 45.0 KV (2048 ctx x 1 slot) + 48.0 overhead"


def test_transformers_memory_takes_the_kv_its_batcher_allocated():
    m = model_memory(info("transformers", 600 * MIB, kv_cache_bytes=40 * MIB, parallel=4))
    assert (m["weights_mib"], m["kv_mib"], m["slots"]) == (560.0, 40.0, 4)
    assert "4 slots" in memory_line(m)


def test_a_remote_engine_has_no_memory_here_and_says_so():
    m = model_memory(info("remote", 0))
    assert m["total_bytes"] == 0 and memory_line(m) == "memory not visible (remote engine)"


def test_a_dict_and_the_object_give_the_same_figures():
    i = info("llamacpp", 181 * MIB, weights_bytes=136 * MIB, n_ctx=2048, parallel=1)
    assert model_memory(i) == model_memory(i.as_dict())


def test_the_model_tab_shows_the_same_memory_line_and_the_provenance():
    from monitoring.stats import model_view
    from ui.model import describe

    i = info("llamacpp", 181 * MIB, weights_bytes=136 * MIB, n_ctx=2048, parallel=1)
    view = model_view(i)
    text = describe({"model": view})
    assert memory_line(view["memory"]) in text and "Memory = weights + KV cache" in text
    assert "**Provenance:**" in text and "m.gguf" in text
