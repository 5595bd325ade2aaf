"""The quality meter against an independent computation on the same token ids: perplexity from
torch's cross-entropy, KL divergence computed directly from the two logit sets, top-1 agreement
from argmaxes. Random logits with a known structure; fast, no model."""

from __future__ import annotations

import numpy as np
import pytest

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


def independent(ref_fn, var_fn, wins):
    """The same figures with torch, straight from the definitions."""
    nll, kls, agree, n = [], [], 0, 0
    for w in wins:
        ref = torch.tensor(ref_fn(w)[:-1], dtype=torch.float64)
        var = torch.tensor(var_fn(w)[:-1], dtype=torch.float64)
        target = torch.tensor(w[1:])
        nll.append(torch.nn.functional.cross_entropy(var, target, reduction="none"))
        p_log, q_log = torch.log_softmax(ref, -1), torch.log_softmax(var, -1)
        kls.append((p_log.exp() * (p_log - q_log)).sum(-1))  # KL(reference || variant)
        agree += int((ref.argmax(-1) == var.argmax(-1)).sum())
        n += len(target)
    k = torch.cat(kls)
    return {"ppl": float(torch.cat(nll).mean().exp()), "kld_mean": float(k.mean()),
            "kld_p99": float(torch.quantile(k, 0.99)), "top1_agreement": agree / n}


def meter(ref_fn, var_fn, wins, directory) -> dict:
    """The app's quality meter: the reference's log-probs to disk, then the variant scored against them."""
    ref = quality.Reference(directory=directory)
    try:
        quality.score(ref_fn, wins, ref, build_reference=True)
        return quality.score(var_fn, wins, ref)
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
