"""The quality meter against an independent computation on the same token ids: perplexity from
torch's cross-entropy, KL divergence computed directly from the two logit sets, top-1 agreement
from argmaxes. Random logits with a known structure; fast, no model."""

from __future__ import annotations

import numpy as np
import pytest

from backends.errors import InvalidRequest
from optimization import quality

torch = pytest.importorskip("torch")
VOCAB, WINDOW, N_WINDOWS = 50, 32, 3


def logit_fn(seed: int, noise: float = 0.0, base_seed: int = 0):
    """Deterministic logits per window: a shared base plus this variant's noise."""
    def fn(ids):
        key = int(sum(ids)) % 10_000
        base = np.random.default_rng(base_seed * 10_000 + key).normal(size=(len(ids), VOCAB)) * 3
        extra = np.random.default_rng(seed * 10_000 + key).normal(size=(len(ids), VOCAB)) * noise
        return (base + extra).astype(np.float32)
    return fn


def windows():
    rng = np.random.default_rng(7)
    return [rng.integers(0, VOCAB, size=WINDOW).tolist() for _ in range(N_WINDOWS)]


def independent(ref_fn, var_fn, wins, first: int = 0, floor: float = -float("inf")):
    """The same figures with torch, straight from the definitions: positions ``first`` .. len - 2
    scored, reference log-probs at or below ``floor`` left out of the KL sum."""
    nll, kls, agree, n = [], [], 0, 0
    for w in wins:
        ref = torch.tensor(ref_fn(w)[first:-1], dtype=torch.float64)
        var = torch.tensor(var_fn(w)[first:-1], dtype=torch.float64)
        target = torch.tensor(w[first + 1:])
        nll.append(torch.nn.functional.cross_entropy(var, target, reduction="none"))
        p_log, q_log = torch.log_softmax(ref, -1), torch.log_softmax(var, -1)
        terms = p_log.exp() * (p_log - q_log)
        kls.append(torch.where(p_log > floor, terms, 0.0).sum(-1))  # KL(reference || variant)
        agree += int((ref.argmax(-1) == var.argmax(-1)).sum())
        n += len(target)
    k = torch.cat(kls)
    return {"ppl": float(torch.cat(nll).mean().exp()), "kld_mean": float(k.mean()),
            "kld_p99": float(torch.quantile(k, 0.99)), "top1_agreement": agree / n}


def meter(ref_fn, var_fn, wins, directory, scoring: str = "all") -> dict:
    """The app's quality meter: the reference's log-probs to disk, then the variant scored against them."""
    ref = quality.Reference(directory=directory)
    try:
        quality.score(ref_fn, wins, ref, build_reference=True, scoring=scoring)
        return quality.score(var_fn, wins, ref, scoring=scoring)
    finally:
        ref.close()


@pytest.mark.parametrize("noise", [0.0, 0.3, 2.0])
def test_scores_match_an_independent_torch_computation(tmp_path, noise):
    wins = windows()
    ref_fn, var_fn = logit_fn(0), logit_fn(1, noise)
    ours = meter(ref_fn, var_fn, wins, tmp_path)
    want = independent(ref_fn, var_fn, wins)
    assert ours["tokens"] == N_WINDOWS * (WINDOW - 1)
    assert ours["ppl"] == pytest.approx(want["ppl"], rel=1e-4)
    assert ours["kld_mean"] == pytest.approx(want["kld_mean"], rel=1e-3, abs=1e-6)
    assert ours["kld_p99"] == pytest.approx(want["kld_p99"], rel=1e-3, abs=1e-6)
    assert ours["top1_agreement"] == pytest.approx(want["top1_agreement"])
    if noise == 0.0:  # the reference against itself
        assert ours["kld_mean"] == pytest.approx(0.0, abs=1e-6) and ours["top1_agreement"] == 1.0


def test_kl_is_taken_from_the_reference_not_reversed(tmp_path):
    """KL is asymmetric: KL(ref || variant) differs from KL(variant || ref) here, and the meter
    must report the former (llama.cpp's convention)."""
    wins = windows()
    sharp = lambda ids: logit_fn(0)(ids) * 3  # noqa: E731 - a peaked reference
    flat = lambda ids: logit_fn(0)(ids) * 0.3  # noqa: E731 - a flat variant
    ours = meter(sharp, flat, wins, tmp_path)
    forward = independent(sharp, flat, wins)["kld_mean"]
    backward = independent(flat, sharp, wins)["kld_mean"]
    assert abs(forward - backward) > 0.1 * forward
    assert ours["kld_mean"] == pytest.approx(forward, rel=1e-3)


def test_llamacpp_chunks_are_consecutive_windows_starting_with_bos():
    """llama-perplexity's chunks: n_ctx tokens each, cut from the tokenized text, the first token of
    each replaced by BOS when the model adds one; the tail that does not fill a chunk is dropped."""
    ids = list(range(100, 200))
    chunks = quality.chunks_llamacpp(ids, 16, 90, bos=1)
    assert len(chunks) == 5 and all(len(c) == 16 for c in chunks)
    assert [c[0] for c in chunks] == [1] * 5
    assert [c[1:] for c in chunks] == [ids[i * 16 + 1:(i + 1) * 16] for i in range(5)]
    assert quality.chunks_llamacpp(ids, 16, 100, bos=None) == [ids[i * 16:(i + 1) * 16] for i in range(6)]
    with pytest.raises(InvalidRequest):
        quality.chunks_llamacpp(ids[:15], 16, 100, bos=1)


def test_llamacpp_scoring_scores_only_the_second_half_of_each_chunk(tmp_path):
    wins = windows()
    seen = []
    ref_fn, var_fn = logit_fn(0), logit_fn(1, 0.5)
    ours = meter(lambda ids: seen.append(len(ids)) or ref_fn(ids), var_fn, wins, tmp_path, scoring="llama.cpp")
    want = independent(ref_fn, var_fn, wins, first=WINDOW // 2)
    assert seen == [WINDOW] * N_WINDOWS, "the whole chunk is evaluated, as context"
    assert quality.scoring_offset("llama.cpp", WINDOW) == WINDOW // 2 == 16
    assert ours["tokens"] == N_WINDOWS * (WINDOW - 1 - WINDOW // 2)  # llama-perplexity's count
    assert ours["ppl"] == pytest.approx(want["ppl"], rel=1e-4)
    assert ours["kld_mean"] == pytest.approx(want["kld_mean"], rel=1e-3, abs=1e-6)
    assert ours["top1_agreement"] == pytest.approx(want["top1_agreement"])
    assert ours["ppl"] != pytest.approx(meter(ref_fn, var_fn, wins, tmp_path)["ppl"], rel=1e-4)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the -1e6 logits' perplexity; not under test
def test_llamacpp_kld_leaves_out_reference_probabilities_below_e_minus_16(tmp_path):
    """llama-perplexity --kl-divergence sums p_ref * (log p_ref - log p) only where log p_ref > -16."""
    wins = windows()
    sharp = lambda ids: logit_fn(0)(ids) * 4  # noqa: E731 - many reference log-probs below -16

    def sharper(ids):  # the reference, but ruling out the tokens it finds all but impossible
        lg = sharp(ids)
        return np.where(quality.log_softmax(lg) < quality.LLAMACPP_MIN_LOG_PROB, -1e6, lg).astype(np.float32)

    ours = meter(sharp, sharper, wins, tmp_path, scoring="llama.cpp")
    masked = independent(sharp, sharper, wins, first=WINDOW // 2, floor=quality.LLAMACPP_MIN_LOG_PROB)["kld_mean"]
    full = independent(sharp, sharper, wins, first=WINDOW // 2)["kld_mean"]
    assert abs(masked) < 1e-5 < 1e-2 < full
    assert ours["kld_mean"] == pytest.approx(masked, abs=1e-5)


def test_unknown_scoring_is_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="scoring"):
        meter(logit_fn(0), logit_fn(1), windows(), tmp_path, scoring="llamacpp")
