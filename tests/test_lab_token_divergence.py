"""Token-level divergence in Compare: every reply token's KLD and top-1 agreement against the
reference on the same prefix. The heatmap's figures are the quality meter's on the same tokens
(real models), and the per-token arithmetic is checked against the meter on fixed logits (fast)."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import ChatRequest, Message, SamplingParams
from optimization import quality
from optimization.lab import Lab, Variant
from optimization.token_divergence import compare_divergence, first_divergence, reply_ids, token_kld, token_texts
from tests.conftest import make_manager


def meter(ref_fn, var_fn, windows):
    ref = quality.Reference()
    try:
        quality.score(ref_fn, windows, ref, build_reference=True)
        return quality.score(var_fn, windows, ref)
    finally:
        ref.close()


def test_per_token_kld_is_the_meters_on_fixed_logits():
    rng = np.random.default_rng(7)
    ref_logits, var_logits = rng.normal(size=(40, 50)) * 3, rng.normal(size=(40, 50)) * 3
    window = [int(t) for t in rng.integers(0, 50, size=40)]
    kld, same, _, _ = token_kld(ref_logits[:-1], var_logits[:-1])
    s = meter(lambda w: ref_logits, lambda w: var_logits, [window])
    assert s["kld_mean"] == pytest.approx(float(kld.mean()), rel=1e-6)
    assert s["kld_p99"] == pytest.approx(float(np.percentile(kld, 99)), rel=1e-6)
    assert s["top1_agreement"] == pytest.approx(float(same.mean()))
    zero, all_same, _, _ = token_kld(ref_logits, ref_logits)
    assert np.allclose(zero, 0.0, atol=1e-6) and all_same.all()


def test_the_first_greedy_divergence_is_the_first_disagreeing_token():
    assert first_divergence([True, True, False, True, False]) == 2
    assert first_divergence([True, True]) is None
    assert first_divergence([]) is None


def test_token_texts_put_a_split_character_on_the_token_that_completes_it():
    pieces = {1: b"Hi", 2: b" caf", 3: b"\xc3", 4: b"\xa9", 5: b"!"}

    def detok(ids):
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    assert token_texts(detok, [1, 2, 3, 4, 5]) == ["Hi", " caf", "", "é", "!"]


@pytest.fixture(scope="module")
def lab(cache_dir):
    lab = Lab(make_manager(cache_dir=cache_dir))
    yield lab
    lab.release()


PROMPT = "Write one sentence about the sea."


def test_the_heatmaps_kld_equals_the_quality_meters_on_the_same_tokens(lab):
    panes = list(lab.compare("embedded", ["llamacpp:Q2_K"], PROMPT, SamplingParams(max_new_tokens=24, temperature=0.0)))[-1]
    [d] = compare_divergence(lab, "embedded", PROMPT, panes, reference="llamacpp:Q8_0")
    assert d["variant"] == "llamacpp:Q2_K" and d["reference"] == "llamacpp:Q8_0"
    variant, _ = lab._held_or_open("embedded", Variant.parse("llamacpp:Q2_K", lab.registry))
    reference, own = lab._held_or_open("embedded", Variant.parse("llamacpp:Q8_0", lab.registry))
    try:
        prompt_ids = variant.prompt_ids(ChatRequest((Message("user", PROMPT),)))
        reply = reply_ids(variant, panes[0]["text"])
        ids = prompt_ids + reply
        k = len(prompt_ids) - 1
        # the meter's one window: the last prompt token then the reply, each position seeing the whole prefix
        window = ids[k:]
        s = meter(lambda w: reference.logits(ids)[k:], lambda w: variant.logits(ids)[k:], [window])
    finally:
        if own:
            reference.close()
    assert s["tokens"] == len(reply) == len(d["tokens"]) == d["scored"] > 10
    assert "".join(t["text"] for t in d["tokens"]) == variant.detokenize(reply)
    per_token = [t["kld"] for t in d["tokens"]]
    assert d["kld_mean"] == pytest.approx(s["kld_mean"], rel=1e-5) and d["kld_mean"] > 0
    assert float(np.mean(per_token)) == pytest.approx(s["kld_mean"], rel=1e-4, abs=1e-6)
    assert d["kld_p99"] == pytest.approx(s["kld_p99"], rel=1e-5)
    assert d["top1_agreement"] == pytest.approx(s["top1_agreement"])
    same = [t["same_top1"] for t in d["tokens"]]
    assert d["first_divergence"] == (same.index(False) if False in same else None)
    for t in d["tokens"]:  # hover: both distributions' top tokens, most likely first
        assert len(t["variant_top"]) == len(t["reference_top"]) == 5
        assert t["same_top1"] == (t["variant_top"][0][0] == t["reference_top"][0][0])


def test_a_variant_against_itself_never_diverges(lab):
    panes = [{"variant": "llamacpp:Q2_K", "text": "The sea is wide and deep.", "finish_reason": "stop"}]
    [d] = compare_divergence(lab, "embedded", PROMPT, panes, reference="llamacpp:Q2_K")
    assert d["first_divergence"] is None and d["top1_agreement"] == 1.0
    assert max(t["kld"] for t in d["tokens"]) < 1e-5
