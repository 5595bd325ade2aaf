"""Faster per-request sampling for transformers' continuous batching (same distribution, less work).

transformers' per-request top-k and top-p processors each sort the whole vocabulary for every row of
every step, and the manager then draws with ``torch.multinomial`` over the whole vocabulary: on a CPU
with a 49k vocabulary those three cost several times the 135M model's own decode step (issue 16:
continuous batching single stream well below plain generate()). Here top-k takes ``torch.topk`` of the
batch's largest k, top-p works on the surviving candidates only, and the draw is the exponential race
(``argmax p / E``, E ~ Exp(1): token i wins with probability p_i) over those candidates; the chosen
token comes back as the only finite score, so the manager's greedy path (argmax) takes it. A step whose
rows are all greedy (top-k 1, temperature 1) skips the temperature division, takes an argmax for the
top-1 and has nothing left to draw.

``install(manager)`` swaps them in on a manager that is built but not started (one instance only;
transformers itself is not patched). Import lazily: it imports transformers.
"""

from __future__ import annotations

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingTemperatureLogitsWarper,
    ContinuousBatchingTopKLogitsWarper,
    ContinuousBatchingTopPLogitsWarper,
)


class Temperature(ContinuousBatchingTemperatureLogitsWarper):
    """Skips the division when every row's temperature is 1 (greedy requests are sent as temperature 1,
    top-k 1): x / 1.0 is x, and a full-vocabulary op saved per step counts at batch 1."""

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        temperatures = tensor_arg[: scores.size(0)].view(dtype=torch.float32)
        if bool((temperatures == 1.0).all()):
            return scores
        return scores / temperatures.unsqueeze(-1)


class TopK(ContinuousBatchingTopKLogitsWarper):
    greedy_step = False  # this step's rows were all top-k 1: the scores returned are the drawn tokens already

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        self.greedy_step = False
        vocab = scores.size(-1)
        k = tensor_arg[: scores.size(0)].to(torch.int64)
        limited = k < vocab  # a top-k of the whole vocabulary (0 = off) keeps every token
        if not bool(limited.any()):
            return scores
        k_max = int(k[limited].max())
        if k_max == 1 and bool(limited.all()):  # greedy rows only: a top-1 over the vocabulary profiled ~5x an argmax
            self.greedy_step = True
            chosen = scores.argmax(-1, keepdim=True)
            return torch.full_like(scores, self.filter_value).scatter_(-1, chosen, 0.0)
        top = torch.topk(scores, k_max, dim=-1).values  # [B, k_max], largest first
        threshold = top.gather(-1, (k.clamp(1, k_max) - 1).unsqueeze(-1))
        threshold = threshold.masked_fill(~limited.unsqueeze(-1), float("-inf"))
        return scores.masked_fill(scores < threshold, self.filter_value)


class TopPAndDraw(ContinuousBatchingTopPLogitsWarper):
    """Top-p over the candidates left by top-k, then the draw. Returns scores where only the drawn
    token is finite (0), the others -inf."""

    top_k: TopK | None = None  # set by install(): the top-k that runs before this in the same step

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        if self.top_k is not None and self.top_k.greedy_step:  # one finite score per row: nothing to draw
            return scores
        top_p = tensor_arg[: scores.size(0)].view(dtype=torch.float32).unsqueeze(-1)  # [B, 1]
        n = int(torch.isfinite(scores).sum(-1).max())  # candidates left by top-k (the vocabulary if none)
        if n == 1:  # greedy rows only (top-k 1): nothing to draw
            chosen = scores.argmax(-1, keepdim=True)
        elif n == scores.size(-1) and bool((top_p >= 1.0).all()):  # no top-k, no nucleus: race, no sort
            probs = scores.softmax(-1)
            chosen = (probs / _exponential(probs)).argmax(-1, keepdim=True)
        else:
            values, ids = torch.topk(scores, n, dim=-1)  # [B, n], most likely first
            probs = values.softmax(-1)
            before = probs.cumsum(-1) - probs  # probability of the more likely candidates
            # transformers' rule: drop a token once the candidates above it reach top_p (the first always stays)
            probs = probs.masked_fill((before >= top_p) & (top_p < 1.0), 0.0)
            chosen = ids.gather(-1, (probs / _exponential(probs)).argmax(-1, keepdim=True))  # [B, 1]
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, chosen, 0.0)


def _exponential(like: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise, never 0 (a 0 would divide a zero probability into NaN)."""
    return torch.empty_like(like).exponential_().clamp_min_(torch.finfo(like.dtype).tiny)


def install(manager) -> None:
    """Swap the manager's per-request top-k/top-p for the ones above and let it take the argmax."""
    processors = manager.logit_processor.logits_processor
    kinds = [type(p) for p in processors]
    if ContinuousBatchingTopPLogitsWarper not in kinds or ContinuousBatchingTopKLogitsWarper not in kinds:
        raise RuntimeError(f"unexpected continuous batching processors: {[k.__name__ for k in kinds]}")
    if kinds.index(ContinuousBatchingTopPLogitsWarper) != len(kinds) - 1:
        raise RuntimeError("top-p is not the last continuous batching processor: the draw must come last")
    for i, p in enumerate(processors):
        if type(p) is ContinuousBatchingTemperatureLogitsWarper:
            processors[i] = _rebuild(Temperature, p)
        elif type(p) is ContinuousBatchingTopKLogitsWarper:
            processors[i] = _rebuild(TopK, p)
        elif type(p) is ContinuousBatchingTopPLogitsWarper:
            processors[i] = _rebuild(TopPAndDraw, p)
    # top-p is last (checked above), so top-k's greedy flag is always this step's when top-p reads it
    next(p for p in processors if type(p) is TopPAndDraw).top_k = next(p for p in processors if type(p) is TopK)
    manager.generation_config.do_sample = False  # the draw is done: the batch processor takes the argmax


def _rebuild(cls, old):
    new = cls.__new__(cls)
    new.__dict__.update(old.__dict__)
    return new
