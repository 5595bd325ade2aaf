"""Token-level divergence: where, token by token, a variant's reply parts from the reference model.

A Compare pane's reply is scored on ONE sequence of ids (the prompt as the variant read it, chat
template applied, then the reply's tokens) under both the variant and the reference. Every reply
token gets the KL divergence of the reference's next-token distribution from the variant's on the
same prefix (the quality meter's definition, ``optimization/quality.py``: KL(reference || variant),
clipped at 0), whether the two most likely tokens agree, and both distributions' top tokens. The
first token where the variant's greedy choice differs from the reference's is marked.

The reply's tokens are its text tokenized again (a stream carries text, not ids); for a greedy reply
they are the ids the variant generated, save for the rare text a tokenizer splits another way.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from backends.base import ChatRequest, Message
from backends.errors import Cancelled, InvalidRequest
from optimization import quality
from optimization.lab import DEFAULT_REFERENCE, LAB_CTX, Lab, Variant, parse_variants

TOP = 5  # top tokens of each distribution shown on hover
# Most ids one pane's scoring takes: the llama.cpp logits context is made at max(first request, 512)
# tokens, so staying within 512 works whatever the quality meter ran before.
MAX_SCORED_IDS = 512


@dataclass
class TokenScore:
    """One reply token: its text, the KLD and top-1 agreement of the distributions that chose it, and
    both distributions' top tokens as (text, probability)."""
    text: str
    kld: float
    same_top1: bool
    variant_top: list[tuple[str, float]] = field(default_factory=list)
    reference_top: list[tuple[str, float]] = field(default_factory=list)


def token_kld(ref_logits: np.ndarray, var_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per position: KL(reference || variant) clipped at 0 (quality.score's "all" scoring), whether
    the argmaxes agree, and both log-softmaxes (over the vocabulary both share)."""
    vocab = min(ref_logits.shape[1], var_logits.shape[1])
    rp = quality.log_softmax(np.asarray(ref_logits, dtype=np.float32)[:, :vocab])
    lp = quality.log_softmax(np.asarray(var_logits, dtype=np.float32)[:, :vocab])
    kld = np.clip((np.exp(rp) * (rp - lp)).sum(axis=1), 0.0, None)
    return kld, rp.argmax(axis=1) == lp.argmax(axis=1), rp, lp


def first_divergence(same_top1: Sequence[bool]) -> int | None:
    """Index of the first token whose greedy choice differs from the reference's (None: none does)."""
    return next((i for i, same in enumerate(same_top1) if not same), None)


def token_texts(detokenize, ids: Sequence[int]) -> list[str]:
    """Each token's text as it reads in the reply: the growth of the decoded prefix, so a character
    split across tokens shows on the token that completes it."""
    out, before = [], ""
    for i in range(len(ids)):
        now = detokenize(list(ids[:i + 1]))
        if now.endswith("\ufffd"):  # an incomplete character: wait for the token that completes it
            out.append("")
            continue
        out.append(now[len(before):])
        before = now
    return out


def score_reply(ref_logits_fn, var_logits_fn, detokenize, prompt_ids: Sequence[int], reply_ids: Sequence[int],
                top: int = TOP) -> dict:
    """Score ``reply_ids`` after ``prompt_ids`` under both models. Returns {tokens: [TokenScore as
    dicts], first_divergence, kld_mean, kld_p99, top1_agreement, scored, reply_tokens}; only the reply
    tokens that fit MAX_SCORED_IDS with the prompt are scored (``scored`` says how many)."""
    prompt_ids, reply_ids = list(prompt_ids), list(reply_ids)
    if not prompt_ids:
        raise InvalidRequest("The prompt rendered to no tokens.", "prompt")
    room = MAX_SCORED_IDS - len(prompt_ids)
    if room < 1:
        raise InvalidRequest(f"The prompt takes {len(prompt_ids)} tokens: token divergence scores replies to "
                             f"prompts under {MAX_SCORED_IDS} tokens.", "prompt")
    scored = reply_ids[:room]
    out = {"tokens": [], "first_divergence": None, "kld_mean": None, "kld_p99": None, "top1_agreement": None,
           "scored": len(scored), "reply_tokens": len(reply_ids), "prompt_tokens": len(prompt_ids)}
    if not scored:
        return out
    ids = prompt_ids + scored
    rows = slice(len(prompt_ids) - 1, len(ids) - 1)  # the positions whose next token is a reply token
    ref = np.asarray(ref_logits_fn(ids), dtype=np.float32)[rows]
    var = np.asarray(var_logits_fn(ids), dtype=np.float32)[rows]
    kld, same, rp, lp = token_kld(ref, var)
    names: dict[int, str] = {}

    def name(t: int) -> str:
        if t not in names:
            names[t] = detokenize([int(t)])
        return names[t]

    def tops(logp: np.ndarray) -> list[tuple[str, float]]:
        best = np.argsort(-logp)[:top]
        return [(name(int(t)), round(float(np.exp(logp[t])), 4)) for t in best]

    texts = token_texts(detokenize, scored)
    out["tokens"] = [asdict(TokenScore(texts[i], round(float(kld[i]), 6), bool(same[i]), tops(lp[i]), tops(rp[i])))
                     for i in range(len(scored))]
    out.update(first_divergence=first_divergence(same), kld_mean=float(kld.mean()),
               kld_p99=float(np.percentile(kld, 99)), top1_agreement=float(same.mean()))
    return out


def reply_ids(lease, text: str) -> list[int]:
    """The reply's tokens: its text tokenized as the model does, without the BOS tokenize() adds."""
    ids = lease.tokenize(text)
    bos = lease.tokenize("")
    return ids[len(bos):] if bos and ids[:len(bos)] == bos else ids


def compare_divergence(lab: Lab, source: str, prompt: str, panes: Sequence[dict], reference: str = DEFAULT_REFERENCE,
                       cancel: threading.Event | None = None) -> list[dict]:
    """For each Compare pane ({variant, text, ...} as /compare yields them): its reply's per-token
    divergence from ``reference`` (``score_reply``'s dict with "variant" and "reference" added).
    Panes that failed or wrote nothing get no tokens. The variants Compare holds are reused."""
    if not isinstance(panes, (list, tuple)) or not all(isinstance(p, dict) for p in panes):
        raise InvalidRequest('panes must be the list /compare returns: [{"variant": ..., "text": ...}, ...].', "panes")
    if not (prompt or "").strip():
        raise InvalidRequest("The prompt is empty.", "prompt")
    variants = parse_variants([p.get("variant") for p in panes], lab.registry, at_least=1)
    if len(variants) != len(panes):
        raise InvalidRequest("Each pane must name a different variant.", "panes")
    ref_variant = Variant.parse(reference or DEFAULT_REFERENCE, lab.registry)
    request = ChatRequest((Message("user", prompt),))
    cancel = cancel or threading.Event()
    if not lab._lock.acquire(timeout=0.1):
        raise InvalidRequest("Another comparison or evaluation is running; try again when it is done.")
    try:
        lab.check_memory(source, [ref_variant, *variants], LAB_CTX, together=False)
        ref_lease, own_ref = lab._held_or_open(source, ref_variant)
        try:
            results = []
            for v, pane in zip(variants, panes):
                if cancel.is_set():
                    raise Cancelled("The token divergence was stopped.")
                text = pane.get("text") or ""
                failed = pane.get("finish_reason") == "error" or "\n[error: " in text
                lease, own = (ref_lease, False) if v == ref_variant else lab._held_or_open(source, v)
                try:
                    if failed or not text:
                        r = score_reply(ref_lease.logits, lease.logits, lease.detokenize, lease.prompt_ids(request), [])
                    else:
                        r = score_reply(ref_lease.logits, lease.logits, lease.detokenize, lease.prompt_ids(request),
                                        reply_ids(lease, text))
                finally:
                    if own:
                        lease.close()
                results.append({"variant": v.label, "reference": ref_variant.label, **r})
            return results
        finally:
            if own_ref:
                ref_lease.close()
    finally:
        lab._lock.release()
