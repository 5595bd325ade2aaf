"""Reply versions and the turn helpers behind Regenerate, Continue, edits and the version bar."""

from __future__ import annotations

from serving.requests import normalize_history
from ui.chat_turns import (add_version, drop_versions_from, ensure_version, group_of, last_turn, reply_text,
                           set_version, show_version, thinking_text, turn_messages, turn_of_index, version_count)


def stats(n: int) -> dict:
    return {"role": "assistant", "content": f"{n} tokens", "metadata": {"title": f"Stats: {n} tokens"}}


def chat() -> list[dict]:
    return [{"role": "user", "content": "Hi"}, *turn_messages("Hello!", stats_message=stats(2)),
            {"role": "user", "content": "Name a colour"}, *turn_messages("Blue.", "They want one colour.",
                                                                          stats_message=stats(3))]


def test_a_turn_is_its_question_and_the_assistant_messages_after_it():
    history = chat()
    assert last_turn(history) == 1 and last_turn([]) is None
    assert reply_text(group_of(history, 0)) == "Hello!"
    assert reply_text(group_of(history, 1)) == "Blue." and thinking_text(group_of(history, 1)) == "They want one colour."
    assert turn_of_index(history, 0) == 0 and turn_of_index(history, len(history) - 1) == 1
    # the model sees the questions and replies only: no thinking, no stats line
    assert [(m.role, m.content) for m in normalize_history(history)] == [
        ("user", "Hi"), ("assistant", "Hello!"), ("user", "Name a colour"), ("assistant", "Blue.")]


def test_regenerate_keeps_every_reply_and_the_arrows_move_between_them():
    history = chat()
    versions = ensure_version({}, history, 1)  # the reply on screen becomes version 1
    assert version_count(versions, 1) == (1, 1)
    second = turn_messages("Red.", stats_message=stats(2))
    versions = add_version(versions, 1, second)
    history = history[:4] + second
    assert version_count(versions, 1) == (2, 2)
    back, versions = show_version(history, versions, 1, -1)
    assert reply_text(group_of(back, 1)) == "Blue." and thinking_text(group_of(back, 1)) == "They want one colour."
    assert version_count(versions, 1) == (1, 2)
    same, versions = show_version(back, versions, 1, -1)  # clamped at the first
    assert reply_text(group_of(same, 1)) == "Blue."
    forth, versions = show_version(same, versions, 1, +1)
    assert reply_text(group_of(forth, 1)) == "Red." and forth[:4] == chat()[:4]  # earlier turns untouched


def test_an_earlier_turn_keeps_its_versions_when_a_later_one_changes():
    history = chat()
    versions = add_version(ensure_version({}, history, 0), 0, turn_messages("Hey there!"))
    history = history[:1] + turn_messages("Hey there!") + history[3:]  # turn 0 now has no stats line
    versions = ensure_version(versions, history, 1)
    back, versions = show_version(history, versions, 0, -1)
    assert reply_text(group_of(back, 0)) == "Hello!" and reply_text(group_of(back, 1)) == "Blue."


def test_continue_and_edits_change_the_shown_version_in_place():
    versions = add_version({}, 0, turn_messages("Once upon"))
    versions = set_version(versions, 0, turn_messages("Once upon a time"))
    assert version_count(versions, 0) == (1, 1)
    assert reply_text(versions["0"]["items"][0]) == "Once upon a time"


def test_editing_a_question_forgets_the_versions_from_there_on():
    versions = add_version(add_version({}, 0, turn_messages("a")), 1, turn_messages("b"))
    versions = add_version(versions, 2, turn_messages("c"))
    assert sorted(drop_versions_from(versions, 1)) == ["0"]
    assert version_count(drop_versions_from(versions, 1), 1) == (0, 0)


def test_a_note_and_thinking_are_titled_so_the_model_never_sees_them():
    group = turn_messages("Answer", "thoughts", note="2 oldest messages left out", thinking_done=False)
    assert [m.get("metadata", {}).get("title", "") for m in group] == [
        "Thinking", "Note: 2 oldest messages left out", ""]
    assert group[0]["metadata"]["status"] == "pending"
    assert [m.content for m in normalize_history([{"role": "user", "content": "q"}, *group])] == ["q", "Answer"]
