"""Speculative decoding without a draft model (n-gram prompt lookup): the drafter on its own, then the
real embedded model loaded with and without --speculative ngram: llama.cpp with one slot, llama.cpp's
batch engine (4 slots), and transformers' generate() with prompt lookup.

llama.cpp picks its CPU kernels by batch shape: without flash attention, a token verified beside its
drafts gets logits up to ~1.6 apart from the same token decoded alone (measured on the code-edit prompt
of benchmarks/bench_speculative.py: mean |diff| 0.7 over the vocabulary), so greedy output is identical to
plain decoding only where the arg-max is not that close; the prompts below are ones where it holds. With
flash attention (the default: auto, on for the CPU) the verified logits are bit-identical to
single-token decoding while the context stays under llama.cpp's split-KV threshold (a KV view under 512
cells, i.e. up to 256 tokens here): that is asserted exactly.
"""

from __future__ import annotations

import threading

import pytest

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams
from backends.errors import InvalidRequest
from backends.speculative import NgramDrafter, SpecStats
from serving.settings import parse_args
from tests.conftest import greedy, make_manager

# A reply that repeats itself ("Hello, hello, hello, ..." for 40 tokens on llama.cpp with flash attention,
# the default, and on transformers fp32): what prompt lookup is for. (The longer "... ten times
# separated by spaces." stops after "Hello, hello!" with flash attention: nothing left to draft.)
REPEAT = (Message("user", "Write the word 'hello' ten times."),)
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
    from backends.llamacpp.backend import LlamaCppBackend

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


# --- llama.cpp's batch engine (the default, --parallel 4) -----------------------------------------------

def _batched(cache_dir, speculative, **kw):
    from backends.llamacpp.backend import LlamaCppBackend

    b = LlamaCppBackend(cache_dir)
    info = b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=1024, parallel=4, prefix_cache=False,
                            speculative=speculative, **kw))
    return b, info


@pytest.fixture(scope="module")
def batched_pair(cache_dir):
    plain, _ = _batched(cache_dir, None)
    spec, info = _batched(cache_dir, "ngram")
    yield plain, spec, info
    plain.unload()
    spec.unload()


@pytest.mark.parametrize("messages,n", [(REPEAT, 40), (COLOURS, 24)])
def test_batched_greedy_output_is_identical_to_plain_batched_decoding(batched_pair, messages, n):
    plain_b, spec_b, info = batched_pair
    assert info.details["speculative"] == "ngram" and "speculative_note" not in info.details
    plain, plain_deltas = _run(plain_b, greedy(n, messages))
    fast, deltas = _run(spec_b, greedy(n, messages))
    assert fast == plain
    assert sum(d.tokens for d in deltas) == sum(d.tokens for d in plain_deltas)
    assert all(d.tokens in (0, 1) for d in deltas)
    assert deltas[-1].finish_reason == plain_deltas[-1].finish_reason


def test_batched_repetitive_reply_accepts_drafts_and_says_so(batched_pair):
    _, backend, info = batched_pair
    before = info.details["spec_accepted_tokens"]
    _, deltas = _run(backend, greedy(40, REPEAT))
    last = deltas[-1]
    assert last.draft_tokens > 0 and 10 <= last.accepted_tokens <= last.draft_tokens
    assert info.details["spec_accepted_tokens"] == before + last.accepted_tokens


def test_batched_speculative_and_sampled_requests_run_side_by_side(batched_pair):
    """Greedy speculative requests and sampled ones share the batch: each gets its solo text, the
    sampled ones draft nothing, and the greedy ones still accept drafts."""
    _, backend, _ = batched_pair
    sampled = ChatRequest(COLOURS, SamplingParams(max_new_tokens=24, temperature=0.9, top_p=0.95, seed=7))
    requests = [greedy(40, REPEAT), sampled, greedy(24, COLOURS), greedy(40, REPEAT)]
    alone = [_run(backend, r) for r in requests]
    together: list = [None] * len(requests)

    def go(i):
        together[i] = _run(backend, requests[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert [t[0] for t in together] == [a[0] for a in alone]
    assert all(t[1][-1].finish_reason in ("stop", "length") for t in together)
    assert together[1][1][-1].draft_tokens == 0
    assert together[0][1][-1].accepted_tokens > 0 and together[3][1][-1].accepted_tokens > 0


def test_batched_logprobs_come_with_every_accepted_token(batched_pair):
    plain_b, spec_b, _ = batched_pair
    req = ChatRequest(REPEAT, SamplingParams(max_new_tokens=20, temperature=0.0, seed=0), logprobs=2)
    _, plain = _run(plain_b, req)
    _, fast = _run(spec_b, req)
    fast_lp = [lp for d in fast for lp in d.logprobs]
    assert len(fast_lp) == sum(d.tokens for d in fast)
    assert [lp.token for lp in fast_lp] == [lp.token for d in plain for lp in d.logprobs]
    assert fast[-1].accepted_tokens > 0


def test_batched_cancel_mid_draft_frees_the_slot(batched_pair):
    _, backend, _ = batched_pair
    cancel = threading.Event()
    n = 0
    for d in backend.stream(greedy(200, REPEAT), cancel):
        n += d.tokens
        if n >= 5:
            cancel.set()
        if d.finish_reason:
            assert d.finish_reason == "cancelled"
    assert n < 40
    text, _ = _run(backend, greedy(8, COLOURS))
    assert text


@pytest.mark.parametrize("parallel", [1, 4], ids=["one-slot", "batched"])
def test_with_flash_attention_greedy_output_is_exactly_plain_decoding(cache_dir, parallel):
    """Flash attention computes each query row alone (no batch-shape dependence) while the context is
    short: verified drafts then give exactly the plain run's text, on a near-tie prompt too."""
    from backends.llamacpp.backend import LlamaCppBackend

    prompts = [REPEAT, COLOURS, (Message("user", "Say 'one two three one two three' three times."),)]
    texts = {}
    for speculative in (None, "ngram"):
        b = LlamaCppBackend(cache_dir)
        b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=parallel, prefix_cache=False,
                         flash_attn=True, speculative=speculative))
        try:
            texts[speculative] = [_run(b, greedy(64, m)) for m in prompts]
        finally:
            b.unload()
    assert [t for t, _ in texts["ngram"]] == [t for t, _ in texts[None]]
    assert sum(d[-1].accepted_tokens for _, d in texts["ngram"]) > 0  # drafts were verified, not skipped


def test_manager_stats_report_acceptance_with_the_batch_engine(cache_dir):
    manager = make_manager()
    manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=1024, parallel=4, speculative="ngram"))
    try:
        text, stats = manager.generate(greedy(30, REPEAT))
        assert "hello" in text.lower()
        assert stats["draft_tokens"] > 0 and 0 < stats["accepted_tokens"] <= stats["draft_tokens"]
    finally:
        manager.unload()


# --- transformers: generate() with prompt lookup ------------------------------------------------------

@pytest.fixture(scope="module")
def hf_pair(cache_dir):
    from backends.hf.backend import TransformersBackend

    plain, spec = TransformersBackend(cache_dir), TransformersBackend(cache_dir)
    plain.load(ModelSpec(source="embedded", backend="transformers", quantization="fp32", parallel=1))
    info = spec.load(ModelSpec(source="embedded", backend="transformers", quantization="fp32", parallel=1,
                               speculative="ngram", spec_draft_tokens=8))
    yield plain, spec, info
    plain.unload()
    spec.unload()


@pytest.mark.parametrize("messages,n", [(REPEAT, 40), (COLOURS, 24)])
def test_transformers_greedy_output_is_identical_and_acceptance_reported(hf_pair, messages, n):
    plain_b, spec_b, info = hf_pair
    plain, plain_deltas = _run(plain_b, greedy(n, messages))
    fast, deltas = _run(spec_b, greedy(n, messages))
    assert fast == plain
    assert sum(d.tokens for d in deltas) == sum(d.tokens for d in plain_deltas)
    assert deltas[-1].finish_reason == plain_deltas[-1].finish_reason
    assert 0 <= deltas[-1].accepted_tokens <= deltas[-1].draft_tokens
    assert info.details["speculative"] == "ngram"
    if messages is REPEAT:
        assert deltas[-1].accepted_tokens >= 10
        assert info.details["spec_accepted_tokens"] >= deltas[-1].accepted_tokens


def test_transformers_sampled_requests_draft_nothing(hf_pair):
    _, spec_b, _ = hf_pair
    _, deltas = _run(spec_b, ChatRequest(COLOURS, SamplingParams(max_new_tokens=8, temperature=0.9, seed=3)))
    assert deltas[-1].draft_tokens == 0 and deltas[-1].accepted_tokens == 0


def test_transformers_bad_speculative_settings_are_clear_errors(cache_dir):
    from backends.hf.backend import TransformersBackend

    with pytest.raises(InvalidRequest, match="spec_draft_tokens"):
        TransformersBackend(cache_dir).load(ModelSpec(source="embedded", backend="transformers", quantization="fp32",
                                                      speculative="ngram", spec_draft_tokens=0))


def test_bad_speculative_settings_are_clear_errors(cache_dir):
    from backends.llamacpp.backend import LlamaCppBackend

    b = LlamaCppBackend(cache_dir)
    with pytest.raises(InvalidRequest, match="ngram"):
        b.load(ModelSpec(source="embedded", backend="llamacpp", parallel=1, speculative="eagle"))
    with pytest.raises(InvalidRequest, match="spec_draft_tokens"):
        b.load(ModelSpec(source="embedded", backend="llamacpp", parallel=1, speculative="ngram", spec_draft_tokens=0))
