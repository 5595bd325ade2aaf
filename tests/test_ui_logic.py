"""UI logic with a scripted backend: history handling, coalescing, regenerate, error conversion."""

from __future__ import annotations

import gradio as gr
import pytest

from backends.base import ModelSpec
from backends.errors import ContextLengthExceeded, InvalidRequest, NoModelLoaded
from serving.requests import normalize_history
from tests.conftest import make_manager, make_services
from tests.fakes import FakeScript, fake_registry
from ui.edge import gradio_errors


@pytest.fixture
def script():
    return FakeScript()


@pytest.fixture
def handlers(script):
    m = make_manager(registry=fake_registry(script))
    m.load(ModelSpec(source="fake-model", backend="fake"))
    return make_services(m, stream_interval_s=0.0)


def test_gradio_history_parts_become_plain_messages():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hello!", "metadata": None},
        {"role": "user", "content": [{"type": "file", "file": {"path": "/x.png"}}, {"type": "text", "text": "see"}]},
    ]
    msgs = normalize_history(history)
    assert [(m.role, m.content) for m in msgs] == [("user", "Hi there"), ("assistant", "Hello!"), ("user", "see")]
    assert normalize_history(None) == []
    assert [m.content for m in normalize_history([["a", "b"]])] == ["a", "b"]
    with pytest.raises(InvalidRequest, match="role"):
        normalize_history([{"role": "robot", "content": "x"}])


def test_chat_sends_system_history_and_message_in_order(handlers, script):
    script.enqueue(["Hel", "lo", "!"])
    out = list(handlers.chat("How are you?", [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "yo"}], "Be brief.", 16, 0.0, 1, 0, 1, 0))
    sent = script.seen[-1].messages
    assert [(m.role, m.content) for m in sent] == [("system", "Be brief."), ("user", "hi"), ("assistant", "yo"),
                                                   ("user", "How are you?")]
    assert [r for r, _ in out[:-1]] == ["Hel", "Hello", "Hello!"]
    final_reply, stats = out[-1]
    assert final_reply == "Hello!" and stats["completion_tokens"] == 3 and stats["prompt_tokens"] == 7
    assert all(s == {} for _, s in out[:-1])


def test_stream_updates_are_coalesced_for_slow_clients(handlers, script):
    script.enqueue([str(i) for i in range(200)])
    handlers.chat_service.stream_interval_s = 10.0  # nothing but the first token and the final item get through
    out = list(handlers.chat("count", [], "", 300, 0.0, 1, 0, 1, 0))
    assert [r for r, _ in out] == ["0", "".join(str(i) for i in range(200))]


def test_errors_become_gr_error_with_the_sentence(handlers, script):
    script.enqueue(ContextLengthExceeded("The conversation is 9999 tokens long but the context holds 2048."))
    wrapped = gradio_errors(handlers.chat)
    with pytest.raises(gr.Error, match="9999 tokens"):
        list(wrapped("hi", [], "", 8, 0.0, 1, 0, 1, 0))
    script.enqueue(ZeroDivisionError("oops"))
    with pytest.raises(gr.Error, match="Internal error .ZeroDivisionError.. The server is still running"):
        list(wrapped("hi", [], "", 8, 0.0, 1, 0, 1, 0))
    assert handlers.manager.metrics.recent(1)[-1].outcome == "error"
    assert [r for r, _ in wrapped("hi", [], "", 8, 0.0, 1, 0, 1, 0)][-1] == "ok"


def test_failed_load_keeps_the_old_model(handlers):
    with pytest.raises(Exception, match="scripted load failure"):
        list(handlers.load_steps("fail", "fake", None))
    assert handlers.manager.current.name == "fake-model"
    assert list(handlers.chat("hi", [], "", 8, 0.0, 1, 0, 1, 0))[-1][0] == "ok"


def test_no_model_is_a_clear_error(script):
    h = make_services(make_manager(registry=fake_registry(script)))
    with pytest.raises(NoModelLoaded, match="No model is loaded"):
        list(h.chat("hi", [], "", 8, 0.0, 1, 0, 1, 0))
    assert h.unload_model() == "No model was loaded."


def test_closing_the_stream_cancels_and_records(handlers, script):
    script.enqueue([str(i) for i in range(1000)])
    gen = handlers.chat("count", [], "", 2000, 0.0, 1, 0, 1, 0)
    next(gen)
    gen.close()  # what Gradio does on Stop or disconnect
    last = handlers.manager.metrics.recent(1)[-1]
    assert last.outcome == "cancelled"
    assert handlers.manager.metrics.running == 0
