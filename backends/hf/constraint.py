"""Constrained decoding for the transformers backend with llguidance (guidance-ai's Rust grammar
engine, one dependency-free wheel): a JSON object, a JSON Schema or a GBNF grammar becomes a token
mask applied as a logits processor in generate().

The llguidance tokenizer is built once per loaded model (about a second) on first use. Import this
module lazily: it imports transformers and llguidance.
"""

from __future__ import annotations

import json
import threading

import numpy as np
from transformers import LogitsProcessor

from backends.base import Constraint
from backends.errors import InvalidRequest

# Compact separators and no free whitespace: a small model otherwise pads JSON with endless blank lines.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_for(constraint: Constraint) -> str:
    """llguidance's grammar text for ``constraint``; InvalidRequest naming its field if it is bad.
    (The schema's size and depth were bounded when the Constraint was made: ``grammar_limits``.)"""
    import llguidance

    param = constraint.param
    try:
        if constraint.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=_JSON_OPTIONS)
        if constraint.kind == "json_schema":
            try:
                schema = json.loads(constraint.schema or "")
            except ValueError as exc:
                raise InvalidRequest(f"The JSON schema is not valid JSON: {exc}", param) from exc
            if not isinstance(schema, dict):
                raise InvalidRequest("The JSON schema must be a JSON object.", param)
            return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
        return llguidance.grammar_from("gbnf", constraint.schema or "")
    except InvalidRequest:
        raise
    except (ValueError, TypeError, RuntimeError, RecursionError) as exc:  # llguidance's refusals
        raise InvalidRequest(f"The {constraint.kind} constraint cannot be used: {str(exc)[:300]}", param) from exc


class Grammars:
    """Makes matchers for one model's tokenizer."""

    def __init__(self, hf_tokenizer, n_vocab: int, eos: list[int]):
        self._hf, self._n_vocab, self._eos = hf_tokenizer, n_vocab, eos
        self._tokenizer = None
        self._lock = threading.Lock()

    def _lltokenizer(self):
        import llguidance.hf

        with self._lock:
            if self._tokenizer is None:
                try:
                    self._tokenizer = llguidance.hf.from_tokenizer(self._hf, n_vocab=self._n_vocab,
                                                                   eos_token=self._eos[0] if self._eos else None)
                except (ValueError, TypeError) as exc:
                    raise InvalidRequest(f"Constrained output needs a fast tokenizer; this model's cannot be used "
                                         f"({exc}).", "response_format") from exc
            return self._tokenizer

    def processor(self, constraint: Constraint, n_prompt: int) -> ConstraintProcessor:
        import llguidance

        grammar = grammar_for(constraint)
        tokenizer = self._lltokenizer()
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        if error and not error.startswith("WARNING"):
            raise InvalidRequest(f"The {constraint.kind} constraint cannot be used: {error[:300]}", constraint.param)
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequest(f"The {constraint.kind} constraint cannot be used: {matcher.get_error()[:300]}",
                                 constraint.param)
        return ConstraintProcessor(matcher, n_prompt, self._eos)


class ConstraintProcessor(LogitsProcessor):
    """Masks every token the grammar does not allow next. Feeds the matcher the tokens generated since
    its last call; once the grammar is complete only an end-of-sequence token remains allowed."""

    def __init__(self, matcher, n_prompt: int, eos: list[int]):
        self.matcher, self.seen, self.eos = matcher, n_prompt, eos

    def __call__(self, input_ids, scores):
        import torch

        new = input_ids[0, self.seen:].tolist()
        self.seen = input_ids.shape[1]
        for token in new:
            if not self.matcher.consume_token(token):
                raise RuntimeError(f"constrained decoding lost its grammar: {self.matcher.get_error()}")
        vocab = scores.shape[-1]
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = np.zeros(vocab, dtype=bool)
        n = min(vocab, bits.size)
        allowed[:n] = bits[:n].astype(bool)
        if self.eos and allowed[self.eos[0]]:  # the grammar may end here: any end-of-sequence token will do
            allowed[self.eos] = True
        if not allowed.any():
            raise RuntimeError(f"constrained decoding has no token left: {self.matcher.get_error()}")
        mask = torch.from_numpy(allowed).to(scores.device)
        return scores.masked_fill(~mask, float("-inf"))
