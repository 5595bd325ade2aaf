"""Editing a question that was sent with files: the edited question (a new branch) keeps its files,
and the reply to it is generated with them (the handlers over the scripted backend; the browser
check with a real vision model is in ``tests/test_browser_paste.py``)."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

from gradio.context import LocalContext

from tests.fakes import FakeScript
from tests.test_chat_context import services
from ui import attachments
from ui import chat_tree as ct
from ui.chat_actions import ChatActions
from ui.chat_turns import group_of, reply_text

PARAMS = ("", 300, 0.0, 1.0, 0, 1.0, 0)
NOTES = "The secret word is heliotrope.\n"


@contextmanager
def uploaded(monkeypatch, tmp_path, *paths):
    """``paths`` as files a user uploaded (what Gradio records while an event runs)."""
    monkeypatch.setattr(attachments, "upload_root", lambda: tmp_path.resolve())
    token = LocalContext.blocks.set(SimpleNamespace(upload_file_set={str(p) for p in paths}))
    try:
        yield
    finally:
        LocalContext.blocks.reset(token)


def test_edited_message_keeps_file_parts_in_either_form():
    shown = {"role": "user", "content": [{"path": "/u/a.png"}, "old"]}
    gradio = {"role": "user", "content": [{"type": "file", "file": {"path": "/u/a.png"}}, {"type": "text", "text": "old"}]}
    assert attachments.edited_message(shown, "new") == {"role": "user", "content": ["new", {"path": "/u/a.png"}]}
    assert attachments.edited_message(gradio, "new")["content"] == ["new", {"type": "file", "file": {"path": "/u/a.png"}}]
    assert attachments.edited_message({"role": "user", "content": "old"}, "new") == {"role": "user", "content": "new"}


def test_a_chat_saved_with_files_before_the_text_is_shown_text_first():
    old = {"role": "user", "content": [{"path": "/u/a.png"}, {"type": "text", "text": "see"}]}
    tree, _ = ct.add_node(ct.empty_tree(), "", "user", [old])
    shown = ct.history(attachments.texts_first(tree))
    assert shown == [{"role": "user", "content": [{"type": "text", "text": "see"}, {"path": "/u/a.png"}]}]
    assert ct.matches(tree, shown)  # the same conversation
    for same in ({"role": "user", "content": [{"path": "/u/a.png"}]}, {"role": "user", "content": "plain"},
                 {"role": "user", "content": ["see", {"path": "/u/a.png"}]}):
        assert attachments.text_first(same) is same


def test_an_edited_question_keeps_its_file_and_the_reply_sees_it(monkeypatch, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES)
    script = FakeScript()
    script.enqueue(["A1"], ["B1"])
    actions = ChatActions(services(script, n_ctx=4096))
    with uploaded(monkeypatch, tmp_path, notes.resolve()):
        job, history, _, tree = actions.prepare_send("What is the secret word?", [], {}, [str(notes)])
        *_, last = list(actions.run_turn(job, tree, *PARAMS))
        history, tree = last[0], last[3]
        assert "heliotrope" in script.seen[-1].messages[-1].content

        class Edit:  # what gr.EditData carries; the Chatbot hands back the edited text alone
            index, value, previous_value = 0, "Tell me the secret word.", "What is the secret word?"

        edited = [dict(m) for m in history]
        edited[0]["content"] = [{"type": "text", "text": Edit.value}]
        job, shown, _, tree = actions.on_edit(edited, tree, Edit())
        assert attachments.file_parts(shown[0]["content"]) == [{"path": str(notes)}]  # still shown
        *_, last = list(actions.run_turn(job, tree, *PARAMS))
        history, tree = last[0], last[3]
    sent = script.seen[-1].messages[-1].content
    assert "Tell me the secret word." in sent and "notes.md" in sent and "heliotrope" in sent
    assert reply_text(group_of(history, 0)) == "B1"
    assert attachments.file_parts(history[0]["content"]) == [{"path": str(notes)}]
    first = ct.user_ids(tree)[0]
    back, tree, _ = actions.switch_branch(f"{first} -1", tree)  # the original question keeps its file too
    assert attachments.file_parts(back[0]["content"]) == [{"path": str(notes)}]
