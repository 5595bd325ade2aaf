"""A reply built on a cached prefix equals the reply computed from scratch.

Two real servers on the embedded model (llama.cpp, two batch slots), through the real `openai` client:
one as started by default (a slot keeps its last prompt's KV cells for the next request sharing a
prefix; cells that leave a slot go to the host prompt cache), one started with ``--no-prefix-cache
--prompt-cache-mib 0`` (every prompt prefilled from scratch). A conversation is pushed out of its slot
by more conversations than there are slots, then comes back: with its next turn, and edited in the
middle of its first message (the cached cells are good up to the edit only). The greedy replies, and
their tokens' log probabilities, must be the same on both servers.

The cells compared are prompt cells. Those of a reply the server generated itself were computed one
token per decode step, which llama.cpp's kernels do not reproduce bit for bit in a prompt batch: a
greedy near-tie in the next turn can then flip (seen: two tokens 0.08 nats apart), with or without the
host cache, so the history's assistant turn here is one the cached server did not generate.

Both servers run with flash attention off, then both with the default (auto: on for the CPU). Off, the
promise is exact: the same greedy text, logprobs within 0.05. On, it holds up to flash attention's
numerics: llama.cpp's CPU kernel accumulates a batch of fewer than its tile's rows (the rest of a prompt
after a restored prefix, or one token) in f16 and a larger one (a whole prompt) in f32, so the restored
conversation's logprobs move (measured: up to ~0.2 nats) and a greedy near-tie can flip, as with
llama-server's cache reuse. What is asserted then is what a wrong restore (other cells, shifted
positions) would break from the first token: the reply starts with the same tokens, and every logprob
before the replies part is within a quarter of a nat of the one from scratch.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.slow

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in a few plain sentences."}


def serve(cache_dir, **flags):
    settings = make_settings(cache_dir=cache_dir, request_log="", n_ctx=1024, parallel=2, **flags)
    return LiveServer(settings), ModelSpec.from_settings(settings)  # what `python app.py <flags>` loads


@pytest.fixture(scope="module", params=["off", "auto"], ids=["flash-attn-off", "flash-attn-auto"])
def servers(cache_dir, request):
    """{"cached": (server, client), "scratch": (server, client), "flash_attn": "off" or "auto"}."""
    out, stack = {"flash_attn": request.param}, []
    try:
        for name, flags in (("cached", {"prompt_cache_mib": 64}),
                            ("scratch", {"no_prefix_cache": True, "prompt_cache_mib": 0})):
            srv, spec = serve(cache_dir, flash_attn=request.param, **flags)
            srv.__enter__()
            stack.append(srv)
            srv.manager.load(spec)
            out[name] = (srv, openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=600))
        assert out["cached"][0].manager._resident.spec.prefix_cache
        assert not out["scratch"][0].manager._resident.spec.prefix_cache
        shown = {"off": "off", "auto": "auto: on"}[request.param]  # /health's details say which
        assert [httpx.get(out[n][0].url + "/health").json()["model"]["flash_attn"] for n in ("cached", "scratch")] \
            == [shown, shown]
        yield out
    finally:
        for srv in stack:
            srv.manager.close()
            srv.__exit__(None, None, None)
        for name in ("cached", "scratch"):
            if name in out:
                out[name][1].close()


def reply(client, messages: list[dict], max_tokens: int = 40) -> tuple[str, list[float], list[str]]:
    """The greedy reply, its tokens' logprobs and the tokens."""
    r = client.chat.completions.create(model="default", messages=messages, max_tokens=max_tokens, temperature=0,
                                       logprobs=True)
    c = r.choices[0]
    return c.message.content, [t.logprob for t in c.logprobs.content], [t.token for t in c.logprobs.content]


def engine(srv):
    return srv.manager._resident.backend._engine  # the llama.cpp batch engine (to check the cache was used)


def push_out(client, topic: str) -> None:
    """More new conversations than slots: every slot is taken from the conversation before them."""
    for other in (f"Something else entirely: what does a {topic} cost in Paris and in London these days?",
                  f"A third topic: how is a {topic} made, and who made the first one?"):
        reply(client, [SYSTEM, {"role": "user", "content": other}], max_tokens=8)


SAME_START = 8  # flash attention on: tokens the replies must share (measured: the first flip came at token 10)
NUMERICS = 0.25  # flash attention on: nats a logprob may move before the replies part (measured: up to 0.19)


def same(cached: tuple, scratch: tuple, flash_attn: str) -> None:
    if flash_attn == "off":  # exact: the same text, logprobs within 0.05
        assert cached[0] == scratch[0], "the reply from a cached prefix differs from the reply from scratch"
        assert len(cached[1]) == len(scratch[1])
        assert cached[1] == pytest.approx(scratch[1], abs=0.05), "same text, but the cached prefix changed the logprobs"
        return
    tokens, scratch_tokens = cached[2], scratch[2]
    shared = next((i for i, (a, b) in enumerate(zip(tokens, scratch_tokens)) if a != b), min(len(tokens), len(scratch_tokens)))
    moved = max((abs(a - b) for a, b in zip(cached[1][:shared], scratch[1][:shared])), default=0.0)
    print(f"\nflash attention on: {shared} of {len(scratch_tokens)} tokens shared, logprobs moved up to {moved:.4f}")
    assert shared >= min(SAME_START, len(scratch_tokens)), (
        f"the reply from a cached prefix parts from the one from scratch at token {shared}: "
        f"{''.join(tokens)!r} vs {''.join(scratch_tokens)!r}")
    assert moved <= NUMERICS, f"the cached prefix moved a logprob by {moved:.3f} nats, more than flash attention's numerics"


def test_a_returning_conversation_restored_from_the_host_cache_continues_as_from_scratch(servers):
    srv, cached = servers["cached"]
    _, scratch = servers["scratch"]
    first = [SYSTEM, {"role": "user", "content": "Tell me about the history of sailing ships across the oceans, "
                                                 "from the Phoenicians to the great clipper ships."}]
    reply(cached, first, max_tokens=1)  # the first turn's prompt is in a slot; its answer comes from elsewhere
    answer = reply(scratch, first)[0]
    push_out(cached, "bicycle")
    hits = engine(srv).host_cache.hits
    turn = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And what came after them?"}]
    got = reply(cached, turn)
    assert engine(srv).host_cache.hits == hits + 1, "the conversation did not come back from the host cache"
    same(got, reply(scratch, turn), servers["flash_attn"])


def test_a_conversation_edited_mid_prompt_reuses_only_the_prefix_before_the_edit(servers):
    srv, cached = servers["cached"]
    _, scratch = servers["scratch"]
    opening = ("I am planning a long walking holiday through the mountains of northern Italy next summer with "
               "two friends, and we would like to stay in small villages along the way. ")
    reply(cached, [SYSTEM, {"role": "user", "content": opening + "Which months have the best weather for it?"}])
    push_out(cached, "tent")
    hits, reused = engine(srv).host_cache.hits, engine(srv).prefix_hits
    edited = [SYSTEM, {"role": "user", "content": opening + "What should each of us pack in a small rucksack?"}]
    got = reply(cached, edited)
    assert engine(srv).host_cache.hits == hits + 1, "the edited conversation's prefix did not come from the host cache"
    assert engine(srv).prefix_hits - reused > 30, "the prefix before the edit was not reused"
    same(got, reply(scratch, edited), servers["flash_attn"])
