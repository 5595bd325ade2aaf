"""Fitting a long conversation into the context (the oldest turns left out, with a note), Continue,
and the chat handlers' error paths (a toast, the chat and the typed text kept), on a scripted
backend; the real model's fitting is the last test."""

from __future__ import annotations

import pytest

from backends.base import Backend, Message, ModelSpec
from backends.errors import ContextLengthExceeded
from serving.chat_service import Turn, drop_oldest_turn, fit_messages, prompt_budget
from tests.conftest import make_manager, make_services
from tests.fakes import FakeBackend, FakeScript
from backends.registry import BackendRegistry
from ui.chat_actions import ChatActions
from ui.chat_turns import group_of, reply_text, title_of, version_count


def words(messages) -> int:  # the fake backend's token count: a token per word, 7 at least
    return max(7, sum(len(m.content.split()) for m in messages))


def counting_registry(script: FakeScript, can_count: bool = True) -> BackendRegistry:
    class Counting(FakeBackend):
        features = frozenset({"continue_final"})

        def __init__(self, cache_dir=None):
            super().__init__(script, cache_dir)

        if can_count:
            def count_prompt_tokens(self, request):
                return words(request.messages)

    return BackendRegistry([Counting])


def services(script: FakeScript, n_ctx: int = 64, can_count: bool = True):
    m = make_manager(registry=counting_registry(script, can_count))
    m.load(ModelSpec(source="fake-model", backend="fake", n_ctx=n_ctx))
    return make_services(m, stream_interval_s=0.0)


def long_history(turns: int) -> list[dict]:
    out = []
    for i in range(turns):
        out += [{"role": "user", "content": f"question {i} " + "word " * 8},
                {"role": "assistant", "content": f"answer {i} " + "word " * 8}]
    return out


M = Message


def test_the_oldest_turn_goes_whole_and_the_system_prompt_stays():
    msgs = (M("system", "be brief"), M("user", "a"), M("assistant", "b"), M("assistant", "b2"), M("user", "c"),
            M("assistant", "d"), M("user", "e"))
    shorter, n = drop_oldest_turn(msgs, keep_last=1)
    assert n == 3 and [m.content for m in shorter] == ["be brief", "c", "d", "e"]
    assert drop_oldest_turn((M("system", "s"), M("user", "only")), keep_last=1) == ((M("system", "s"), M("user", "only")), 0)
    fitted, dropped = fit_messages(msgs, lambda ms: len(ms), budget=2)
    assert [m.content for m in fitted] == ["be brief", "e"] and dropped == 5  # as far as it can go
    assert prompt_budget(2048, 512) == 1536 and prompt_budget(256, 512) == 192 and prompt_budget(2048, 64, 1000) == 1000


def test_a_conversation_longer_than_the_context_is_fitted_with_a_note():
    script = FakeScript()
    h = services(script, n_ctx=64)
    history = long_history(6)  # about 120 "tokens"
    *_, (reply, stats) = h.chat("last question", history, "Be brief.", 8, 0.0, 1.0, 0, 1.0, 0,
                                turn=(turn := Turn(fit_context=True)))
    seen = script.seen[-1].messages
    assert reply == "ok" and turn.dropped > 0 and turn.dropped % 2 == 0
    assert seen[0] == M("system", "Be brief.") and seen[-1] == M("user", "last question")
    assert words(seen) <= prompt_budget(64, 8)
    assert seen[1].content.startswith("question")  # whole turns went: a question opens what is left
    assert stats["note"] == f"{turn.dropped} oldest messages left out to fit the 64-token context"
    # the API's /chat (no turn) still refuses rather than silently dropping what the caller sent
    with pytest.raises(ContextLengthExceeded):
        list(h.chat("last question", history, "Be brief.", 8, 0.0, 1.0, 0, 1.0, 0))


def test_a_backend_that_cannot_count_refuses_as_before():
    h = services(FakeScript(), n_ctx=64, can_count=False)
    with pytest.raises(ContextLengthExceeded):
        list(h.chat("q", long_history(6), "", 8, 0.0, 1.0, 0, 1.0, 0, turn=Turn(fit_context=True)))


def test_continue_sends_the_reply_as_the_assistant_message_to_extend():
    script = FakeScript()
    script.enqueue([" upon", " a time"])
    h = services(script)
    *_, (reply, _) = h.chat("Once", [{"role": "user", "content": "Tell a story"}], "", 8, 0.0, 1.0, 0, 1.0, 0,
                            turn=Turn(continue_final=True))
    request = script.seen[-1]
    assert request.continue_final and request.messages[-1] == M("assistant", "Once")
    assert request.messages[-2] == M("user", "Tell a story") and reply == " upon a time"


def drain(gen):
    return list(gen)


def test_a_failed_turn_restores_the_chat_and_the_typed_text():
    h = services(FakeScript())
    h.manager.unload()
    actions = ChatActions(h)
    before = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    job, shown, box, versions = actions.prepare_send("How are you?", before, {})
    assert shown[-1] == {"role": "user", "content": "How are you?"} and box == ""
    with pytest.warns(UserWarning, match="No model is loaded"):  # gr.Warning: a toast in the page
        *_, last = drain(actions.run_turn(job, versions, "", 8, 0.0, 1.0, 0, 1.0, 0))
    assert last[0] == before and last[1] == "How are you?"  # the chat as it was, the text back in the box
    assert actions.running == {}


def test_an_empty_message_or_nothing_to_regenerate_runs_nothing():
    script = FakeScript()
    actions = ChatActions(services(script))
    with pytest.warns(UserWarning, match="empty"):
        assert actions.prepare_send("   ", [{"role": "user", "content": "x"}], {})[0] is None
    with pytest.warns(UserWarning, match="Nothing to regenerate"):
        assert actions.prepare_regenerate([], {})[0] is None
    with pytest.warns(UserWarning, match="no reply to continue"):
        assert actions.prepare_continue([{"role": "user", "content": "x"}], {})[0] is None
    assert len(drain(actions.run_turn(None, {}))) == 1 and script.seen == []  # nothing generated


def test_regenerate_adds_a_version_and_stop_marks_the_reply_with_its_stats():
    script = FakeScript(token_delay=0.01)
    script.enqueue(["Blue", "."], ["Red", "."], [f" {i}" for i in range(200)])
    h = services(script, n_ctx=4096)
    actions = ChatActions(h)
    params = ("", 300, 0.0, 1.0, 0, 1.0, 0)
    job, history, _, versions = actions.prepare_send("Name a colour", [], {})
    *_, last = drain(actions.run_turn(job, versions, *params))
    history, versions = last[0], last[3]
    assert reply_text(group_of(history, 0)) == "Blue." and version_count(versions, 0) == (1, 1)
    job, _, _, versions = actions.prepare_regenerate(history, versions)
    *_, last = drain(actions.run_turn(job, versions, *params))
    history, versions = last[0], last[3]
    assert reply_text(group_of(history, 0)) == "Red." and version_count(versions, 0) == (2, 2)
    # a third version, stopped after a few tokens (Gradio closes the generator on Stop)
    job, _, _, versions = actions.prepare_regenerate(history, versions)
    gen = actions.run_turn(job, versions, *params)
    for _ in range(5):
        next(gen)
    gen.close()
    history, stats_line, versions, counter = actions.finish_stopped(job, versions)
    group = group_of(history, 0)
    assert reply_text(group).startswith(" 0 1 2") and version_count(versions, 0) == (3, 3)
    assert title_of(group[-1]).startswith("Stats: stopped")
    assert "stopped" in stats_line and counter.endswith("/ 4096 tokens")


@pytest.mark.slow
def test_the_real_model_fits_a_long_chat_into_a_small_context(cache_dir):
    from backends.llamacpp.backend import LlamaCppBackend

    if LlamaCppBackend.count_prompt_tokens is Backend.count_prompt_tokens:
        pytest.skip("this llama.cpp backend cannot count prompt tokens yet (the engine branch adds it)")
    m = make_manager(cache_dir=cache_dir)
    m.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=256, parallel=1))
    try:
        h = make_services(m)
        history = long_history(12)
        turn = Turn(fit_context=True)
        *_, (reply, stats) = h.chat("Say hi.", history, "You are brief.", 8, 0.0, 1.0, 0, 1.0, 0, turn=turn)
        assert reply.strip() and turn.dropped >= 2
        assert "oldest messages left out to fit the 256-token context" in stats["note"]
        assert stats["prompt_tokens"] <= prompt_budget(256, 8)
    finally:
        m.close()


def test_thinking_shows_as_its_own_block_and_stays_out_of_the_next_prompt():
    script = FakeScript()
    script.enqueue(["<thi", "nk>The user", " greets me.</th", "ink>", "Hello", "!"], ["Fine."])
    actions = ChatActions(services(script))
    params = ("", 16, 0.0, 1.0, 0, 1.0, 0)
    job, _, _, versions = actions.prepare_send("Hi", [], {})
    updates = drain(actions.run_turn(job, versions, *params))
    history = updates[-1][0]
    group = group_of(history, 0)
    assert [title_of(m) for m in group][:2] == ["Thinking", ""]
    assert group[0]["content"] == "The user greets me." and reply_text(group) == "Hello!"
    # while it streamed, the block was open ("pending") until the tag closed
    assert any(u[0][1:] and u[0][1].get("metadata", {}).get("status") == "pending" for u in updates[:-1])
    job, _, _, versions = actions.prepare_send("How are you?", history, updates[-1][3])
    drain(actions.run_turn(job, versions, *params))
    sent = script.seen[-1].messages
    assert [(m.role, m.content) for m in sent] == [("user", "Hi"), ("assistant", "Hello!"), ("user", "How are you?")]


def test_stop_before_the_turn_begins_puts_the_question_back_and_generates_nothing():
    script = FakeScript()
    actions = ChatActions(services(script))
    job, shown, _, versions = actions.prepare_send("Hello?", [], {})
    assert actions.finish_stopped(job, versions)[0] is not None  # nothing to show yet
    (history, box, *_), = drain(actions.run_turn(job, versions, "", 8, 0.0, 1.0, 0, 1.0, 0))
    assert history == [] and box == "Hello?" and script.seen == []
