"""Per-request llama.cpp sampler chains and token log-probabilities, shared by the unbatched path and
the batch engine (so a request samples the same way through both).

The chain follows llama.cpp's common sampler: grammar (the constraint, first, so every other sampler
sees only allowed tokens), penalties, DRY, then top-k, typical, top-p, min-p, XTC, temperature and the
seeded draw; mirostat 1/2 replaces the truncation samplers and the draw. Greedy requests keep the
grammar and the penalties and take the arg-max. Samplers at their neutral value are left out, so a
plain request's chain is exactly top-k, top-p, temperature, draw.
"""

from __future__ import annotations

import ctypes
import json
import secrets

from backends.base import ChatRequest, Constraint, SamplingParams, TokenLogprob
from backends.errors import InvalidRequest
from backends.grammar_limits import check_gbnf
from backends.options import sequence_breakers

PENALTY_LAST_N = 64  # llama.cpp's repeat_last_n default
MIN_KEEP = 1


def grammar_text(constraint: Constraint | None) -> str | None:
    """The GBNF for ``constraint`` (None = unconstrained), or InvalidRequest naming its field. The
    converted grammar is measured (``check_gbnf``) before llama.cpp parses it: its parser recurses
    once per nested group and a schema's maxLength alone can nest deep enough to overflow the stack."""
    if constraint is None:
        return None
    from llama_cpp import llama_grammar

    param = constraint.param
    if constraint.kind == "json_object":
        return llama_grammar.JSON_GBNF
    if constraint.kind == "grammar":
        return constraint.schema  # measured when the Constraint was made
    try:
        schema = json.loads(constraint.schema)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"The JSON schema is not valid JSON: {exc}", param) from exc
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequest("The JSON schema must be a JSON object.", param)
    try:
        text = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises plain exceptions on schemas it cannot express
        raise InvalidRequest(f"This JSON schema cannot be turned into a grammar: {str(exc)[:300]}", param) from exc
    text = text.replace(_LOOSE_CHAR, _JSON_CHAR, 1)
    check_gbnf(text, param, "this JSON schema's grammar")
    return text


# llama-cpp-python's converter lets a string hold any character but " and \, raw newlines and other
# control characters too, which JSON forbids unescaped (json.loads refuses them): llama.cpp's own
# converter, and llama-cpp-python's JSON_GBNF, exclude them. Seen: a greedy reply whose "name" value
# went on over a raw newline.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def build_sampler(L, vocab, n_vocab: int, params: SamplingParams, grammar: str | None, n_ctx: int,
                  param: str = "response_format"):
    """A new llama_sampler chain for one request (the caller frees it with llama_sampler_free).
    A ``grammar`` llama.cpp refuses is InvalidRequest naming ``param`` and nothing is leaked."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    add = lambda s: L.llama_sampler_chain_add(chain, s)  # noqa: E731 - the chain owns what is added
    p = params
    seed = p.seed if p.seed is not None else secrets.randbits(31)
    if grammar is not None:
        g = L.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not g:
            L.llama_sampler_free(chain)
            raise InvalidRequest(f"{param}: llama.cpp refused the grammar of this constraint (a GBNF with a \"root\" "
                                 "rule is expected, without left recursion, and one repetition may make at most 2,000 "
                                 "rules: lower maxLength, maxItems or a pattern's {m,n}).", param)
        add(g)
    if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
        add(L.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, p.repetition_penalty,
                                           p.frequency_penalty, p.presence_penalty))
    if p.dry_multiplier > 0.0:
        seq = sequence_breakers(p.dry_sequence_breakers)  # "" = llama.cpp's default ones
        breakers = (ctypes.c_char_p * max(len(seq), 1))(*(b.encode("utf-8") for b in seq))
        last_n = n_ctx if p.dry_penalty_last_n < 0 else p.dry_penalty_last_n  # -1 = the whole context
        add(L.llama_sampler_init_dry(vocab, p.dry_multiplier, p.dry_base, p.dry_allowed_length, last_n,
                                     breakers, len(seq)))
    if p.greedy:
        add(L.llama_sampler_init_greedy())
        return chain
    if p.mirostat == 1:
        add(L.llama_sampler_init_temp(p.temperature))
        add(L.llama_sampler_init_mirostat(n_vocab, seed, p.mirostat_tau, p.mirostat_eta, 100))
        return chain
    if p.mirostat == 2:
        add(L.llama_sampler_init_temp(p.temperature))
        add(L.llama_sampler_init_mirostat_v2(seed, p.mirostat_tau, p.mirostat_eta))
        return chain
    if p.top_k:
        add(L.llama_sampler_init_top_k(p.top_k))
    if p.typical_p < 1.0:
        add(L.llama_sampler_init_typical(p.typical_p, MIN_KEEP))
    if p.top_p < 1.0:
        add(L.llama_sampler_init_top_p(p.top_p, MIN_KEEP))
    if p.min_p > 0.0:
        add(L.llama_sampler_init_min_p(p.min_p, MIN_KEEP))
    if p.xtc_probability > 0.0:
        add(L.llama_sampler_init_xtc(p.xtc_probability, p.xtc_threshold, MIN_KEEP, seed))
    add(L.llama_sampler_init_temp(p.temperature))
    add(L.llama_sampler_init_dist(seed))
    return chain


def sampler_for(L, llm, request: ChatRequest, n_ctx: int):
    """``build_sampler`` for ``request`` on the model of the Llama object ``llm``."""
    vocab = llm._model.vocab
    param = request.constraint.param if request.constraint is not None else "response_format"
    return build_sampler(L, vocab, L.llama_vocab_n_tokens(vocab), request.params,
                         grammar_text(request.constraint), n_ctx, param)


def token_logprob(L, ctx, idx: int, token: int, n_vocab: int, top_n: int, piece) -> TokenLogprob:
    """The log-softmax of the logits at batch index ``idx`` (llama_get_logits_ith): ``token``'s
    logprob and the ``top_n`` most likely tokens, most likely first. ``piece(token) -> bytes``."""
    import numpy as np

    ptr = L.llama_get_logits_ith(ctx, idx)
    logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64)
    m = logits.max()
    logz = m + np.log(np.exp(logits - m).sum())
    top: tuple[tuple[str, float], ...] = ()
    if top_n > 0:
        best = np.argpartition(-logits, top_n - 1)[:top_n] if top_n < n_vocab else np.arange(n_vocab)
        best = best[np.argsort(-logits[best], kind="stable")]
        top = tuple((_text(piece(int(t))), float(logits[t] - logz)) for t in best)
    raw = piece(token)
    return TokenLogprob(_text(raw), float(logits[token] - logz), raw, top)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")
