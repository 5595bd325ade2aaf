"""Speculative decoding without a draft model (n-gram prompt lookup): the drafter on its own, then the
real embedded model loaded with and without --speculative ngram.

llama.cpp's kernels are not bit-identical across batch shapes (a token verified inside a batch of
drafts can get logits ~0.5 apart from the same token decoded alone), so greedy output is identical to
plain decoding wherever the arg-max is not a near-tie; the prompts below are ones where it holds.
"""

from __future__ import annotations

import threading

import pytest

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams
from backends.errors import InvalidRequest
from backends.speculative import NgramDrafter, SpecStats
from serving.settings import parse_args
from tests.conftest import greedy, make_manager

REPEAT = (Message("user", "Write the word 'hello' ten times separated by spaces."),)
COLOURS = (Message("user", "Name three colours of the rainbow."),)


# --- the drafter (pure Python) ---------------------------------------------------------------------

def test_drafts_what_followed_the_longest_matching_ngram():
    d = NgramDrafter([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 6, 2, 3], max_ngram=3)
    # "2 3" occurred twice before: its most recent continuation (7 8 6 ...) is drafted
    assert d.draft(3) == [7, 8, 6]
    d.extend([4])  # now "2 3 4" matches the 3-gram at the start, longer than any 2-gram
    assert d.draft(4) == [5, 9, 2, 3]


def test_falls_back_to_shorter_ngrams_and_to_nothing():
    d = NgramDrafter([10, 11, 12, 13, 99], max_ngram=3, min_ngram=1)
    assert d.draft(2) == []  # 99 never occurred before
    d.extend([11])  # only the 1-gram "11" matches
    assert d.draft(2) == [12, 13]
    strict = NgramDrafter([10, 11, 12, 13, 11], max_ngram=3, min_ngram=2)
    assert strict.draft(2) == []


def test_draft_is_cut_at_k_and_at_the_end_of_the_history():
    d = NgramDrafter([5, 6, 7, 8, 5, 6])
    assert d.draft(0) == []
    assert d.draft(1) == [7]
    assert d.draft(10) == [7, 8, 5, 6]  # only what exists


def test_incremental_history_drafts_like_a_fresh_one():
    seq = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7]
    inc = NgramDrafter(seq[:3])
    for i in range(3, len(seq)):
        inc.extend([seq[i]])
        assert inc.draft(4) == NgramDrafter(seq[:i + 1]).draft(4)


def test_bad_ngram_bounds_are_refused():
    with pytest.raises(ValueError):
        NgramDrafter([], max_ngram=1, min_ngram=2)
    with pytest.raises(ValueError):
        NgramDrafter([], max_ngram=3, min_ngram=0)


def test_acceptance_rate():
    s = SpecStats()
    assert s.rate is None
    s.add(8, 6)
    s.add(2, 0)
    assert (s.drafted, s.accepted, s.rate) == (10, 6, 0.6)


def test_a_stop_string_keeps_the_draft_counts():
    from backends.base import TextDelta
    from backends.stops import apply_stops

    def stream():
        yield TextDelta("", prompt_tokens=5)
        for word in ("one ", "two ", "three ", "four "):
            yield TextDelta(word, tokens=1)
        yield TextDelta("", finish_reason="length", prompt_tokens=5, draft_tokens=6, accepted_tokens=4)

    out = list(apply_stops(stream(), ("three",), threading.Event()))
    assert "".join(d.text for d in out) == "one two "
    assert (out[-1].finish_reason, out[-1].draft_tokens, out[-1].accepted_tokens) == ("stop", 6, 4)
    whole = list(apply_stops(stream(), ("nine",), threading.Event()))
    assert (whole[-1].draft_tokens, whole[-1].accepted_tokens) == (6, 4)


# --- settings ---------------------------------------------------------------------------------------

def test_flags_and_env_reach_the_model_spec(monkeypatch):
    monkeypatch.delenv("QUANTLAB_SPECULATIVE", raising=False)
    plain = ModelSpec.from_settings(parse_args([]))
    assert (plain.speculative, plain.spec_draft_tokens) == (None, 8)
    spec = ModelSpec.from_settings(parse_args(["--speculative", "ngram", "--spec-draft-tokens", "5"]))
    assert (spec.speculative, spec.spec_draft_tokens) == ("ngram", 5)
    monkeypatch.setenv("QUANTLAB_SPECULATIVE", "ngram")
    assert ModelSpec.from_settings(parse_args([])).speculative == "ngram"


def test_unknown_speculative_kind_is_a_clear_cli_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--speculative", "medusa"])
    assert "ngram" in capsys.readouterr().err
    with pytest.raises(Exception, match="spec_draft_tokens"):
        parse_args(["--spec-draft-tokens", "0"])


# --- the real model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spec_backend(cache_dir):
    from backends.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(cache_dir)
    info = b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048, parallel=1, speculative="ngram"))
    yield b, info
    b.unload()


def _run(backend, request: ChatRequest):
    deltas = list(backend.stream(request, threading.Event()))
    return "".join(d.text for d in deltas), deltas


@pytest.mark.parametrize("messages,n", [(REPEAT, 40), (COLOURS, 24)])
def test_greedy_output_is_identical_to_plain_decoding(llama_backend, spec_backend, messages, n):
    plain, plain_deltas = _run(llama_backend, greedy(n, messages))
    fast, deltas = _run(spec_backend[0], greedy(n, messages))
    assert fast == plain
    assert sum(d.tokens for d in deltas) == sum(d.tokens for d in plain_deltas)
    assert all(d.tokens in (0, 1) for d in deltas)  # one delta per token, as plain decoding streams
    assert deltas[-1].finish_reason == plain_deltas[-1].finish_reason
    assert deltas[-1].prompt_tokens == plain_deltas[-1].prompt_tokens


def test_a_repetitive_reply_accepts_drafts_and_says_so(spec_backend):
    backend, info = spec_backend
    before = info.details["spec_accepted_tokens"]
    _, deltas = _run(backend, greedy(40, REPEAT))
    last = deltas[-1]
    assert last.finish_reason and last.draft_tokens > 0
    assert 0 < last.accepted_tokens <= last.draft_tokens
    assert last.accepted_tokens >= 10  # "hello hello ..." is what prompt lookup is for
    assert info.details["speculative"] == "ngram" and info.details["spec_draft_tokens"] == 8
    assert info.details["spec_accepted_tokens"] == before + last.accepted_tokens


def test_logprobs_come_with_every_accepted_token(llama_backend, spec_backend):
    req = ChatRequest(REPEAT, SamplingParams(max_new_tokens=20, temperature=0.0, seed=0), logprobs=2)
    _, plain = _run(llama_backend, req)
    _, fast = _run(spec_backend[0], req)
    plain_lp = [lp for d in plain for lp in d.logprobs]
    fast_lp = [lp for d in fast for lp in d.logprobs]
    assert len(fast_lp) == sum(d.tokens for d in fast) == len(plain_lp)
    assert [lp.token for lp in fast_lp] == [lp.token for lp in plain_lp]
    for a, b in zip(plain_lp, fast_lp):
        assert b.logprob <= 0 and len(b.top) == 2
        assert abs(a.logprob - b.logprob) < 0.5  # the same distribution, up to batch-shape numerics


def test_sampled_requests_decode_plainly(llama_backend, spec_backend):
    req = ChatRequest(COLOURS, SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.95, seed=7))
    plain, _ = _run(llama_backend, req)
    text, deltas = _run(spec_backend[0], req)
    assert text == plain  # same seed, same path: nothing drafted
    assert deltas[-1].draft_tokens == 0 and deltas[-1].accepted_tokens == 0


def test_stats_report_the_acceptance_rate(cache_dir):
    manager = make_manager()
    manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=1024, parallel=1, speculative="ngram"))
    try:
        text, stats = manager.generate(greedy(30, REPEAT))
        assert "hello" in text.lower()
        assert stats["draft_tokens"] > 0 and 0 < stats["accepted_tokens"] <= stats["draft_tokens"]
        recorded = manager.metrics.recent(1)[0]
        assert "draft acceptance" in recorded.summary()
    finally:
        manager.unload()


def test_several_slots_say_speculative_is_off(cache_dir):
    from backends.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(cache_dir)
    info = b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=256, parallel=2, speculative="ngram"))
    try:
        assert info.details["speculative"] is None and "--parallel 1" in info.details["speculative_note"]
        text, deltas = _run(b, greedy(8, REPEAT))
        assert text and deltas[-1].draft_tokens == 0
    finally:
        b.unload()


def test_bad_speculative_settings_are_clear_errors(cache_dir):
    from backends.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(cache_dir)
    with pytest.raises(InvalidRequest, match="ngram"):
        b.load(ModelSpec(source="embedded", backend="llamacpp", parallel=1, speculative="eagle"))
    with pytest.raises(InvalidRequest, match="spec_draft_tokens"):
        b.load(ModelSpec(source="embedded", backend="llamacpp", parallel=1, speculative="ngram", spec_draft_tokens=0))
