"""Prompt-lookup speculative decoding on the transformers backend's generate() path, and its counts.

generate(prompt_lookup_num_tokens=k) drafts up to k tokens from the prompt and the reply so far (the
same n-gram lookup as ``backends.speculative``), verifies them in one forward pass and keeps the
matching prefix plus the model's own next token; for greedy decoding the result is plain greedy
decoding's, up to the numerics of a forward pass over several positions instead of one.

generate() reports neither drafted nor accepted tokens, so ``DraftCounter`` reads them off two public
hooks: a logits processor, which assisted generation runs once per verified position (candidate length
+ 1 per forward pass, once per token in plain decoding), and the streamer, which receives each forward
pass's accepted tokens plus the pick after them in one ``put``.
"""

from __future__ import annotations

from backends.speculative import MAX_NGRAM


def _processor_base():
    from transformers import LogitsProcessor

    return LogitsProcessor


class DraftCounter(_processor_base()):
    """A no-op logits processor that, with ``step`` called from the streamer, counts drafted and
    accepted tokens."""

    def __init__(self) -> None:
        self.drafted = 0
        self.accepted = 0
        self._calls = 0  # processor calls since the last streamed step

    def __call__(self, input_ids, scores):
        self._calls += 1
        return scores

    def step(self, n_tokens: int) -> None:
        """The streamer got ``n_tokens`` from one forward pass: ``n_tokens - 1`` of them were drafts the
        model accepted, and that pass verified ``calls - 1`` drafts."""
        if n_tokens <= 0:
            return
        self.drafted += max(0, self._calls - 1)
        self.accepted += n_tokens - 1
        self._calls = 0


def generate_kwargs(draft_tokens: int) -> dict:
    """generate()'s arguments for prompt lookup with up to ``draft_tokens`` drafts per pass."""
    return {"prompt_lookup_num_tokens": draft_tokens, "max_matching_ngram_size": MAX_NGRAM}
