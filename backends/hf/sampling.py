"""Sampling for the transformers backend's generate() path: the extra samplers as generate() keyword
arguments, OpenAI's presence/frequency penalties as a logits processor, and the processor that taps
each step's distribution for logprobs.

generate() runs the processors passed to it after its own penalties (repetition, no-repeat n-gram) and
before its warpers (temperature, top-k, top-p, min-p, typical): the tap, last of ours, sees the
distribution after every penalty and the constraint mask, before temperature and truncation.
"""

from __future__ import annotations

from collections.abc import Callable

from backends.base import SamplingParams


def generate_kwargs(params: SamplingParams) -> dict:
    """generate()'s sampler arguments for ``params`` (presence/frequency go through ``Penalties``)."""
    kwargs: dict = {"repetition_penalty": params.repetition_penalty,
                    "no_repeat_ngram_size": params.no_repeat_ngram_size or None}
    if params.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                      top_k=params.top_k or None, min_p=params.min_p or None,
                      typical_p=params.typical_p if params.typical_p < 1.0 else None)
    return kwargs


def _processor_base():
    from transformers import LogitsProcessor

    return LogitsProcessor


class Penalties(_processor_base()):
    """OpenAI's presence and frequency penalties over the generated tokens (as vLLM applies them):
    ``logit -= presence * (count > 0) + frequency * count``."""

    def __init__(self, presence: float, frequency: float, n_prompt: int):
        self.presence, self.frequency, self.n_prompt = presence, frequency, n_prompt

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.n_prompt:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.presence * (counts > 0).to(scores.dtype) - self.frequency * counts


class LogprobTap(_processor_base()):
    """Hands each step's log-softmax (float32, [vocab]) to ``sink``; changes nothing."""

    def __init__(self, sink: Callable[[object], None]):
        self.sink = sink

    def __call__(self, input_ids, scores):
        import torch

        self.sink(torch.log_softmax(scores[0].float(), dim=-1))
        return scores


def processors(params: SamplingParams, n_prompt: int, constraint=None, tap: Callable | None = None) -> list:
    """Our processors, in the order generate() should run them."""
    out: list = []
    if params.presence_penalty or params.frequency_penalty:
        out.append(Penalties(params.presence_penalty, params.frequency_penalty, n_prompt))
    if constraint is not None:
        out.append(constraint)
    if tap is not None:
        out.append(LogprobTap(tap))
    return out
