"""Prompt-lookup (n-gram) drafting for speculative decoding without a draft model.

After each accepted token the drafter looks up the last ``max_ngram`` tokens of the history (prompt +
generated), then ``max_ngram - 1`` ... down to ``min_ngram``, and proposes the tokens that followed
that n-gram's most recent earlier occurrence (as llama.cpp's n-gram lookup and transformers'
``prompt_lookup_num_tokens`` do). A reply that repeats its input (a code edit, a quote) gets long
drafts that the model accepts in one forward pass; elsewhere the drafts are short or empty and
decoding goes on one token at a time. Pure Python, no model: the backend verifies the drafts.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_NGRAM = 3
MIN_NGRAM = 1
SPECULATIVE_KINDS = ("ngram",)
# Most draft tokens verified in one forward pass (llama.cpp's --draft-max allows 16 by default; more rarely pays).
MAX_DRAFT_TOKENS = 64


class NgramDrafter:
    """An index over the history: for every n-gram (``min_ngram`` <= n <= ``max_ngram``) the position
    just after its most recent occurrence that has a continuation. ``extend`` is O(max_ngram) per
    token, ``draft`` O(max_ngram + k)."""

    def __init__(self, tokens: Iterable[int] = (), max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens to the history (the prompt, then each accepted token)."""
        for t in tokens:
            p = len(self.tokens)  # ``t`` continues every n-gram that ends just before it
            for n in range(self.min_ngram, self.max_ngram + 1):
                if p >= n:
                    self._next[tuple(self.tokens[p - n:p])] = p
            self.tokens.append(int(t))

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens predicted to follow the history; [] when no n-gram of it occurred before."""
        if k <= 0:
            return []
        h = self.tokens
        for n in range(min(self.max_ngram, len(h)), self.min_ngram - 1, -1):
            start = self._next.get(tuple(h[len(h) - n:]))
            if start is not None:
                return h[start:start + k]
        return []


def check_speculative(spec) -> None:
    """A load's speculative settings (``spec.speculative``, ``spec.spec_draft_tokens``), or InvalidRequest."""
    from backends.errors import InvalidRequest

    if spec.speculative is None:
        return
    if spec.speculative not in SPECULATIVE_KINDS:
        raise InvalidRequest(f"speculative must be one of {', '.join(SPECULATIVE_KINDS)} (or none), "
                             f"got {spec.speculative!r}.", "speculative")
    if not 1 <= spec.spec_draft_tokens <= MAX_DRAFT_TOKENS:
        raise InvalidRequest(f"spec_draft_tokens must be 1..{MAX_DRAFT_TOKENS}, got {spec.spec_draft_tokens}.",
                             "spec_draft_tokens")


class SpecStats:
    """Drafted vs accepted token counts (acceptance rate = accepted / drafted)."""

    def __init__(self) -> None:
        self.drafted = 0
        self.accepted = 0

    def add(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted

    @property
    def rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None
