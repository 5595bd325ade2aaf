"""Batched decoding in the llama.cpp backend: concurrent requests share one llama_batch and each
gets exactly the text it gets alone; cancelling one does not disturb the others."""

from __future__ import annotations

import threading
import time

import pytest

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams
from backends.llamacpp.backend import LlamaCppBackend
from backends.llamacpp.prompt_cache import common_prefix
from tests.conftest import long_request

PROMPTS = ["Name three colours.", "Write a haiku about rain.", "What is 2+2?", "Describe a cat.",
           "List four fruits.", "Explain gravity briefly."]


def req(prompt: str, n: int = 48, **sampling) -> ChatRequest:
    return ChatRequest((Message("user", prompt),), SamplingParams(max_new_tokens=n, **{"temperature": 0.0, **sampling}))


def text(backend, request, cancel=None) -> str:
    return "".join(d.text for d in backend.stream(request, cancel or threading.Event()))


@pytest.fixture(scope="module")
def batched(cache_dir):
    b = LlamaCppBackend(cache_dir)
    # exact repeatability is promised without prefix reuse (see BatchEngine.prefix_cache)
    b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=1024, parallel=4, prefix_cache=False))
    yield b
    b.unload()


def concurrently(fn, args) -> list:
    results = [None] * len(args)

    def run(i):
        results[i] = fn(*args[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_concurrent_greedy_requests_get_exactly_their_solo_text(batched):
    assert batched.max_concurrency == 4
    alone = [text(batched, req(p)) for p in PROMPTS]
    together = concurrently(lambda p: text(batched, req(p)), [(p,) for p in PROMPTS])  # 6 requests, 4 slots
    assert together == alone
    assert all(t.strip() for t in alone)


def test_greedy_picks_taken_from_the_logits_equal_the_greedy_samplers(batched, monkeypatch):
    """A greedy request's pick is read straight from the logits (the engine's fast path); the same
    requests through llama.cpp's own greedy sampler give the same text, alone and batched."""
    engine, seen = batched._engine, []
    greedy_alone = engine._greedy_alone
    monkeypatch.setattr(engine, "_greedy_alone", lambda chain: seen.append(greedy_alone(chain)) or seen[-1])
    fast = concurrently(lambda p: text(batched, req(p, 64)), [(p,) for p in PROMPTS[:4]])
    assert seen == [True] * 4 and all(fast)  # the fast path was taken for each
    monkeypatch.setattr(engine, "_greedy_alone", lambda chain: False)
    assert concurrently(lambda p: text(batched, req(p, 64)), [(p,) for p in PROMPTS[:4]]) == fast
    assert [text(batched, req(p, 64)) for p in PROMPTS[:2]] == fast[:2]


def test_per_request_sampling_parameters_and_seeds_hold_under_batching(batched):
    r = req("Tell me a short story.", 32, temperature=1.0, top_k=40, top_p=0.9, seed=7)
    alone = text(batched, r)
    mixed = concurrently(lambda x: text(batched, x), [(r,), (req("Describe a cat."),),
                                                     (req("Write a poem.", 32, temperature=1.2, seed=3),)])
    assert mixed[0] == alone  # the same seed gives the same sample, whatever runs beside it
    assert mixed[1] == text(batched, req("Describe a cat."))


def cancel_one_mid_batch(backend, n_tokens: int = 48) -> tuple[dict, list[str], list[str]]:
    """A long request cancelled after 5 tokens while 3 others run beside it: (what the long one saw,
    the others' texts, the others' solo texts)."""
    expected = [text(backend, req(p, n_tokens)) for p in PROMPTS[:3]]
    cancel = threading.Event()
    got: dict = {}

    def long_one():
        n = 0
        for d in backend.stream(long_request(), cancel):
            n += d.tokens
            if n == 5:
                cancel.set()
            if d.finish_reason:
                got["finish"] = d.finish_reason
        got["tokens"] = n

    t = threading.Thread(target=long_one)
    t.start()
    time.sleep(0.05)
    others = concurrently(lambda p: text(backend, req(p, n_tokens)), [(p,) for p in PROMPTS[:3]])
    t.join(timeout=60)
    return got, others, expected


def walk_away_from_all_slots(backend, slots: int = 4) -> None:
    streams = [backend.stream(long_request(), threading.Event()) for _ in range(slots)]
    for s in streams:
        next(s), next(s)  # every slot busy
    for s in streams:
        s.close()  # what a disconnect does


def test_cancelling_one_request_mid_batch_leaves_the_others_intact(batched):
    got, others, expected = cancel_one_mid_batch(batched)
    assert got["finish"] == "cancelled" and got["tokens"] < 20
    assert others == expected


def test_a_consumer_that_walks_away_frees_its_slot(batched):
    walk_away_from_all_slots(batched)
    deadline = time.time() + 5
    while batched._engine.busy and time.time() < deadline:
        time.sleep(0.01)
    assert batched._engine.busy == 0
    assert text(batched, req("What is 2+2?", 8)).strip()


def test_a_shared_prompt_prefix_is_not_recomputed(cache_dir):
    b = LlamaCppBackend(cache_dir)
    b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=1024, parallel=2))
    try:
        first = req("My name is Zanzibar. What is 2+2?", 16)
        reply = text(b, first)
        follow_up = ChatRequest(first.messages + (Message("assistant", reply), Message("user", "And my name?")),
                                SamplingParams(max_new_tokens=16, temperature=0.0))
        before = b._engine.prefix_hits
        answer = text(b, follow_up)
        reused = b._engine.prefix_hits - before
        print(f"\nfollow-up turn: {reused} of {len(b.prompt_tokens(follow_up))} prompt tokens reused from the KV cache")
        assert reused >= len(b.prompt_tokens(first)) - 1  # the whole first turn
        assert answer.strip()
    finally:
        b.unload()


def test_each_decode_lists_sequences_in_slot_order(cache_dir, monkeypatch):
    """With a KV stream per sequence, llama.cpp fits only consecutive sequence ids into one ubatch, so a
    batch listing slots 3, 2, 1, 0 is computed as four graphs instead of one (33-40 ms instead of 24 ms
    per step on 2 cores). Requests admitted into slots in reverse order (each prompt goes to the slot
    whose kept prefix it shares) must still be batched in slot order."""
    from backends.llamacpp import compute as llamacpp_compute

    b = LlamaCppBackend(cache_dir)
    b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=256, parallel=4))
    try:
        engine = b._engine
        tok = b._llm.tokenize
        prompts = [tok(f"{word} is a word. Tell me about it.".encode()) for word in ("Apple", "Bridge", "Cloud", "Dune")]
        for stream in [engine.submit(p, greedy_sampler(), 4, threading.Event()) for p in prompts]:
            list(stream)  # slots 0..3 now keep prompts 0..3
        orders: list[list[int]] = []
        real_run = llamacpp_compute.run

        def recording_run(fn, *args):
            if fn is engine.L.llama_decode:
                batch = args[1]
                orders.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
            return real_run(fn, *args)

        monkeypatch.setattr(llamacpp_compute, "run", recording_run)
        # each follow-up extends one earlier prompt, submitted in reverse: admitted into slots 3, 2, 1, 0
        streams = [engine.submit(prompts[i] + tok(b" More, please."), greedy_sampler(), 8, threading.Event())
                   for i in reversed(range(4))]
        replies = [list(s) for s in streams]
        assert all(any(d.tokens for d in r) for r in replies)
        assert engine.prefix_hits > 0  # they did land on the slots keeping their prefixes
        assert any(len(set(o)) == 4 for o in orders)  # the four were decoded together
        assert all(o == sorted(o) for o in orders), orders
    finally:
        b.unload()


def greedy_sampler():
    import llama_cpp as L

    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
    return chain


def test_a_conversation_whose_slot_was_taken_comes_back_from_host_memory(cache_dir):
    """Two slots, three conversations: the first one's slot is taken by the third, its KV cells go to the
    host cache, and its next turn is restored from there instead of prefilled again; with the cache
    off (prompt_cache_mib=0) the same turn is prefilled from scratch."""
    reused = {mib: returning_conversation(cache_dir, mib) for mib in (64, 0)}
    assert reused[64][0] >= reused[64][1]  # the whole first turn (prompt and the cells of its reply's prefix)
    assert reused[0][0] < 8  # the chat template's first tokens at most


def test_the_entry_being_restored_is_never_evicted_to_make_room(cache_dir):
    """The slot's own cells are saved before a cached prompt is restored into it; with the cache full,
    making room must not evict the very entry about to be restored (the scheduler would fail)."""
    reused, first_len = returning_conversation(cache_dir, 64, squeeze=True)
    assert reused >= first_len


def returning_conversation(cache_dir, mib: int, squeeze: bool = False) -> tuple[int, int]:
    """A first conversation, two others that take both slots, then the first one's next turn. Returns
    (prompt tokens the next turn reused, tokens of the first turn's prompt). ``squeeze``: the cache's
    budget is cut to what it holds before the next turn, so saving the slot's cells needs eviction."""
    b = LlamaCppBackend(cache_dir)
    b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=2, prompt_cache_mib=mib))
    try:
        engine = b._engine

        def tok(text: str, bos: bool = True) -> list[int]:
            return b._llm.tokenize(text.encode(), add_bos=bos, special=True)

        def user(text: str) -> str:
            return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"

        def run(tokens: list[int], n: int) -> list:
            out: list = []
            worker = threading.Thread(target=lambda: out.extend(engine.submit(tokens, greedy_sampler(), n,
                                                                              threading.Event())))
            worker.start()
            worker.join(60)
            assert not worker.is_alive(), "the engine stopped answering"
            assert sum(d.tokens for d in out) > 0
            return out

        first = tok(user("Tell me about the history of sailing ships across the ocean."))
        reply = run(first, 16)
        for other in ("Something else entirely: what is the price of bread in Paris and in London these days?",
                      "Third topic: how do rockets reach orbit, and why do they need several stages?"):
            run(tok(user(other)), 8)  # both slots retaken
        assert all(common_prefix(kept, first) < 8 for kept in engine._kept.values())  # the template's start at most
        if squeeze:
            assert engine.host_cache.bytes > 0
            engine.host_cache.max_bytes = engine.host_cache.bytes
        turn = first + tok("".join(d.text for d in reply) + "<|im_end|>\n" + user("And then?"), bos=False)
        before = engine.prefix_hits
        run(turn, 8)
        if mib:
            assert engine.host_cache.hits == 1 and 0 < engine.host_cache.bytes <= engine.host_cache.max_bytes
        return engine.prefix_hits - before, len(first)
    finally:
        b.unload()
