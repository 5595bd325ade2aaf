"""The quantization lab on the embedded model: quality meter across both backends, side-by-side
compare through gradio_client, and clear errors before any work."""

from __future__ import annotations

import httpx
import pytest

from backends.errors import InvalidRequest, OutOfMemory, UnsupportedQuantization
from optimization.lab import Lab, Variant, parse_variants
from tests.conftest import make_manager
from ui.lab import first_divergence


@pytest.fixture(scope="module")
def lab(cache_dir):
    return Lab(make_manager(cache_dir=cache_dir))


def test_quality_meter_orders_quants_and_puts_both_backends_in_one_table(lab):
    variants = ["transformers:fp32", "llamacpp:Q8_0", "llamacpp:Q4_0", "llamacpp:Q2_K", "transformers:int8",
                "transformers:nf4"]
    steps = []
    rows = {r.variant: r for r in lab.evaluate("embedded", variants, reference="transformers:fp32", max_tokens=256,
                                               window=128, decode_tokens=8, progress=lambda f, m: steps.append(f))}
    print("\n" + "\n".join(f"{v:20s} ppl {r.ppl:7.3f}  KLD {r.kld_mean:.4f} (p99 {r.kld_p99:.3f})  top1 "
                           f"{r.top1_agreement:.3f}  {r.footprint_mib:6.0f} MiB  {r.decode_tokens_per_s or 0:.1f} tok/s"
                           for v, r in rows.items()))
    assert set(rows) == set(variants)
    ref = rows["transformers:fp32"]
    assert ref.is_reference and ref.kld_mean < 1e-4 and ref.top1_agreement == 1.0
    assert rows["llamacpp:Q8_0"].kld_mean < rows["llamacpp:Q4_0"].kld_mean < rows["llamacpp:Q2_K"].kld_mean
    assert rows["llamacpp:Q8_0"].top1_agreement >= 0.9
    assert rows["transformers:int8"].kld_mean < rows["transformers:nf4"].kld_mean
    assert all(r.tokens == ref.tokens > 200 for r in rows.values()), "every variant scored the same token ids"
    assert rows["llamacpp:Q2_K"].footprint_mib < rows["llamacpp:Q8_0"].footprint_mib < ref.footprint_mib
    assert steps == sorted(steps) and steps[-1] == 1.0


def test_bad_lab_input_fails_before_any_work(lab, tmp_path):
    with pytest.raises(UnsupportedQuantization, match="Unknown quantization"):
        parse_variants(["llamacpp:Q9_9"], lab.registry)
    with pytest.raises(UnsupportedQuantization, match="backend:quantization"):
        Variant.parse("Q4_0", lab.registry)
    with pytest.raises(InvalidRequest, match="at most 4"):
        parse_variants(["llamacpp:Q8_0", "llamacpp:Q6_K", "llamacpp:Q4_0", "llamacpp:Q2_K", "transformers:nf4"], lab.registry, at_most=4)
    short = tmp_path / "short.txt"
    short.write_text("Too short to score.")
    with pytest.raises(InvalidRequest, match="one window needs 128"):
        lab.evaluate("embedded", ["llamacpp:Q8_0"], reference="llamacpp:F16", text_path=str(short), max_tokens=256,
                     window=128)
    with pytest.raises(OutOfMemory, match="only .* MiB is free"):
        lab.check_memory("embedded", [Variant("transformers", "fp32")] * 4000, 2048, together=True)


def test_first_divergence():
    assert first_divergence(["abc", "abc"]) is None
    assert first_divergence(["abcd", "abxd"]) == 2
    assert first_divergence(["ab", "abc"]) == 2


def test_compare_streams_two_variants_through_gradio_client(client, live_app):
    before = httpx.get(live_app.url + "/health").json()["model"]
    job = client.submit("Name three colours.", ["llamacpp:Q8_0", "llamacpp:Q4_0"], "embedded", 32, 0.0, 0,
                        api_name="/compare")
    partials = list(job)
    final = job.result()
    assert [s["variant"] for s in final] == ["llamacpp:Q8_0", "llamacpp:Q4_0"]
    assert all(s["done"] and s["text"].strip() and s["stats"]["completion_tokens"] > 0 for s in final)
    assert all(s["stats"]["ttft_s"] > 0 and s["footprint_mib"] > 50 for s in final)
    assert all(s["finish_reason"] in ("stop", "length") and s["finish_reason"] == s["stats"]["finish_reason"]
               for s in final)
    assert all(s["memory"]["total_mib"] == s["footprint_mib"] and s["provenance"]["source_type"] == "Q4_1"
               for s in final)
    assert len(partials) >= 2
    # the chat model was not touched
    assert httpx.get(live_app.url + "/health").json()["model"] == before
    with pytest.raises(Exception, match="Unknown quantization"):
        client.predict("hi", ["llamacpp:Q9_9", "llamacpp:Q4_0"], api_name="/compare")


def test_compared_variants_are_kept_until_released(cache_dir):
    from backends.base import SamplingParams

    lab = Lab(make_manager(cache_dir=cache_dir))
    list(lab.compare("embedded", ["llamacpp:Q8_0"], "Hi", SamplingParams(max_new_tokens=4, temperature=0.0)))
    list(lab.compare("embedded", ["llamacpp:Q8_0"], "Hi", SamplingParams(max_new_tokens=4, temperature=0.0)))
    assert lab.release() == 1 and lab.release() == 0


def test_evaluate_through_gradio_client(client):
    rows = client.predict(["llamacpp:Q8_0", "llamacpp:Q2_K"], "", 128, "embedded", "llamacpp:F16", 64,
                          api_name="/evaluate")
    # the reference's own row first (KLD 0, top-1 100 %), then the variants by KLD
    assert [(r["variant"], r["is_reference"]) for r in rows] == [
        ("llamacpp:F16", True), ("llamacpp:Q8_0", False), ("llamacpp:Q2_K", False)]
    assert rows[0]["kld_mean"] == 0 and rows[0]["top1_agreement"] == 1 and rows[0]["ppl"] > 1
    assert all(r["ppl"] > 1 and 0 <= r["top1_agreement"] <= 1 and r["footprint_mib"] > 0 for r in rows)
    assert all(r["source_type"] == "Q4_1" and "already quantized" in r["note"] for r in rows)
    llamacpp = client.predict(["llamacpp:Q8_0"], "", 128, "embedded", "llamacpp:F16", 64, "llama.cpp",
                              api_name="/evaluate")  # the new parameter, last: llama-perplexity's positions
    assert llamacpp[1]["tokens"] == llamacpp[0]["tokens"] == 2 * (64 - 1 - 32) < rows[1]["tokens"]


def test_each_compare_pane_is_that_variants_solo_greedy_text(cache_dir):
    """No cross-talk between panes: each pane equals its variant's greedy reply run alone, and the
    panes differ (so a swap would show)."""
    import threading

    from backends.base import ChatRequest, Message, SamplingParams
    from optimization.lab import COMPARE_CTX

    lab = Lab(make_manager(cache_dir=cache_dir))
    variants = ["llamacpp:Q8_0", "llamacpp:Q2_K"]
    params = SamplingParams(max_new_tokens=24, temperature=0.0, top_p=1.0, top_k=0)
    prompt = "Explain what quantization does to a neural network."
    try:
        final = list(lab.compare("embedded", variants, prompt, params))[-1]
        assert [p["variant"] for p in final] == variants
        assert all(p["stats"]["finish_reason"] in ("stop", "length") for p in final)
        for pane, v in zip(final, variants):
            with lab._open("embedded", Variant.parse(v, lab.registry), COMPARE_CTX) as lease:
                gen = lease.stream(ChatRequest((Message("user", prompt),), params), threading.Event())
                assert pane["text"] == "".join(d.text for d in gen), v
        assert final[0]["text"] != final[1]["text"]
    finally:
        lab.release()


def test_releasing_the_compared_variants_returns_their_memory(cache_dir):
    import psutil

    from backends.base import SamplingParams

    proc = psutil.Process()
    lab = Lab(make_manager(cache_dir=cache_dir))
    params = SamplingParams(max_new_tokens=4, temperature=0.0)
    list(lab.compare("embedded", ["llamacpp:F16"], "Hi", params))  # make the variant and warm up once
    lab.release()
    rss0 = proc.memory_info().rss
    list(lab.compare("embedded", ["llamacpp:F16", "llamacpp:Q8_0"], "Hi", params))
    held = proc.memory_info().rss
    assert len(lab.manager.leased()) == 2
    assert lab.release() == 2 and lab.manager.leased() == []
    freed = proc.memory_info().rss
    print(f"\nRSS MiB: before {rss0 / 2**20:.0f}, two variants held {held / 2**20:.0f}, released {freed / 2**20:.0f}")
    assert held - rss0 > 150 * 2**20
    assert freed - rss0 < 0.5 * (held - rss0)
