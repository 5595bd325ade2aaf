"""Past chats: the store kept in the browser (or --chat-dir), search, rename, delete, export/import."""

from __future__ import annotations

import json

import pytest

from backends.errors import InvalidRequest
from serving.chat_store import ChatStore, browser_secret
from ui import chat_history as past
from ui.chat_turns import turn_messages

PARAMS = ["You are a pirate.", 64, 0.0, 0.95, 40, 1.0, 7]


def conversation(question: str, answer: str) -> list[dict]:
    stats = {"role": "assistant", "content": "x", "metadata": {"title": "Stats: 3 tokens"}}
    return [{"role": "user", "content": question}, *turn_messages(answer, "hmm", stats_message=stats)]


def test_saving_a_chat_keeps_its_messages_versions_and_settings_and_titles_it():
    store, a = past.save_chat(None, None, conversation("What is the tallest mountain on Earth, and how tall?", "Everest."),
                              {"0": {"items": [], "i": 0}}, PARAMS)
    chat = past.current_chat(store)
    assert chat["id"] == a and chat["params"] == PARAMS and chat["versions"]
    assert chat["title"].startswith("What is the tallest mountain") and len(chat["title"]) <= past.TITLE_CHARS
    store2, same = past.save_chat(store, a, conversation("Hi", "Hello"), {}, PARAMS)
    assert same == a and len(store2["chats"]) == 1 and past.current_chat(store2)["title"] == "Hi"


def test_new_switch_rename_delete():
    store, a = past.save_chat(None, None, conversation("First", "1"), {}, PARAMS)
    store, b = past.new_chat(store, PARAMS)
    assert b != a and store["current"] == b and past.get_chat(store, b)["messages"] == []
    store, _ = past.save_chat(store, b, conversation("Second", "2"), {}, PARAMS[:1] + [128] + PARAMS[2:])
    store = past.rename_chat(store, a, "  Mountains  ")
    store, _ = past.save_chat(store, a, conversation("First again", "1"), {}, PARAMS)
    assert past.get_chat(store, a)["title"] == "Mountains"  # a renamed chat keeps its name
    with pytest.raises(InvalidRequest, match="name"):
        past.rename_chat(store, a, "   ")
    store, current = past.delete_chat(store, a)
    assert a not in store["chats"] and current == b
    store, current = past.delete_chat(store, b)
    assert store["chats"] == {} and current is None


def test_search_matches_titles_and_message_text_most_recent_first():
    store, a = past.save_chat(None, None, conversation("Tell me about volcanoes", "Lava is hot."), {}, PARAMS)
    store, b = past.new_chat(store)
    store, b = past.save_chat(store, b, conversation("Recipes", "Bake bread."), {}, PARAMS)
    assert [cid for _, cid in past.chat_choices(store)] == [b, a]
    assert [cid for _, cid in past.chat_choices(store, "LAVA")] == [a]
    assert [cid for _, cid in past.chat_choices(store, "bread")] == [b]
    assert past.chat_choices(store, "nothing like this") == []


def test_a_corrupt_store_reads_as_empty():
    for bad in (None, [], "x", {"chats": "no"}, {"chats": {"a": {"messages": "no"}}}):
        assert past.valid_store(bad)["chats"] == {}


def test_export_then_import_one_chat_or_all():
    store, a = past.save_chat(None, None, conversation("Q1", "A1"), {}, PARAMS)
    store, b = past.new_chat(store)
    store, b = past.save_chat(store, b, conversation("Q2", "A2"), {}, PARAMS)
    one = json.loads(json.dumps(past.export_chat(past.get_chat(store, a))))
    assert one["messages"] == [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]
    assert one["params"] == PARAMS
    fresh, imported = past.import_chats(None, one)
    # the file's tree comes back whole: the reply's thinking and stats line too
    assert past.plain_messages(past.get_chat(fresh, imported)["messages"]) == one["messages"]
    assert past.get_chat(fresh, imported)["messages"] == past.get_chat(store, a)["messages"]
    assert past.get_chat(fresh, imported)["params"] == PARAMS
    every = json.loads(json.dumps(past.export_all(store)))
    merged, first = past.import_chats(fresh, every)
    assert len(merged["chats"]) == 3 and past.get_chat(merged, first)["messages"][0]["content"] == "Q2"
    old_format, _ = past.import_chats(None, [{"role": "user", "content": "plain list"}])  # the old export
    assert past.current_chat(old_format)["messages"] == [{"role": "user", "content": "plain list"}]
    with pytest.raises(InvalidRequest):
        past.import_chats(None, {"something": "else"})
    with pytest.raises(InvalidRequest, match="role"):
        past.import_chats(None, [{"role": "robot", "content": "x"}])


def test_chat_dir_keeps_each_user_apart_and_names_no_file_after_a_user(tmp_path):
    disk = ChatStore(tmp_path / "chats")
    store, _ = past.save_chat(None, None, conversation("alice's", "secret"), {}, PARAMS)
    disk.save("alice", store)
    assert disk.load("alice") == json.loads(json.dumps(store))
    assert disk.load("../bob") is None
    assert all("alice" not in p.name for p in (tmp_path / "chats").iterdir())


def test_the_browser_key_survives_a_restart(tmp_path):
    key = browser_secret(tmp_path)
    assert len(key) >= 16 and browser_secret(tmp_path) == key
    assert oct((tmp_path / "browser-state-key").stat().st_mode & 0o777) == "0o600"


def test_a_save_from_an_older_copy_of_the_store_keeps_the_chat_id_the_page_knows():
    store, a = past.save_chat(None, None, conversation("A", "a"), {}, PARAMS)
    newer, b = past.new_chat(store)
    # a save computed from the copy before "New chat" still files chat b under its own id
    stale, saved = past.save_chat(store, b, conversation("B", "b"), {}, PARAMS)
    assert saved == b and set(stale["chats"]) == {a, b}
