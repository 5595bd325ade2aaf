"""The conversation tree behind the Chat tab (pure functions, plus the handlers over a scripted
backend): edits and regenerates make branches, switching shows a branch's whole continuation, the
arrows' map, old chats and flat files read into a tree, and a reply that goes on generating when its
page goes away."""

from __future__ import annotations

import json
import time

import pytest

from tests.fakes import FakeScript
from tests.test_chat_context import services
from ui import chat_history as past
from ui import chat_tree as ct
from ui.chat_actions import ChatActions
from ui.chat_turns import group_of, reply_text, turn_messages


def q(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> list[dict]:
    return turn_messages(text, stats_message={"role": "assistant", "content": "s", "metadata": {"title": "Stats: 1"}})


def three_turns() -> list[dict]:
    return [q("Q1"), *a("A1"), q("Q2"), *a("A2"), q("Q3"), *a("A3")]


def users(tree) -> list[str]:
    return [tree["nodes"][n]["messages"][0]["content"] for n in ct.user_ids(tree)]


def test_a_flat_chat_becomes_one_path_with_a_node_per_row():
    tree = ct.from_history(three_turns())
    assert ct.history(tree) == three_turns() and ct.matches(tree, three_turns())
    assert [tree["nodes"][n]["role"] for n in ct.path_ids(tree)] == ["user", "assistant"] * 3
    assert ct.row_map(tree) == [None] * 6  # no siblings, no arrows
    assert ct.node_at(tree, 0) == ct.user_ids(tree)[0] and ct.node_at(tree, 99) is None


def test_an_edited_first_question_is_a_branch_and_the_original_keeps_its_later_turns():
    tree = ct.from_history(three_turns())
    first = ct.user_ids(tree)[0]
    tree, edited = ct.add_node(tree, "", "user", [q("Q1 edited")])
    tree, _ = ct.add_node(tree, edited, "assistant", a("B1"))
    assert users(tree) == ["Q1 edited"] and reply_text(group_of(ct.history(tree), 0)) == "B1"
    assert ct.row_map(tree)[0] == {"node": edited, "i": 2, "n": 2} and ct.row_map(tree)[1] is None
    back = ct.step(tree, edited, -1)
    assert ct.history(back) == three_turns()  # the whole original continuation
    assert ct.row_map(back)[0] == {"node": first, "i": 1, "n": 2}
    assert ct.history(ct.step(back, first, -1)) == three_turns()  # clamped at the first
    assert users(ct.step(back, first, 1)) == ["Q1 edited"]


def test_regenerated_replies_are_siblings_and_each_keeps_its_own_continuation():
    tree = ct.from_history([q("Q1"), *a("A1"), q("Q2"), *a("A2")])
    q1, a1 = ct.path_ids(tree)[:2]
    tree, a1b = ct.add_node(tree, q1, "assistant", a("A1 again"), stats={"completion_tokens": 3})
    assert ct.turn_version(tree, 0) == (2, 2) and users(tree) == ["Q1"]  # the new reply has no follow-up yet
    tree, q2b = ct.add_node(tree, a1b, "user", [q("Q2b")])
    back = ct.step(tree, a1b, -1)
    assert users(back) == ["Q1", "Q2"] and ct.turn_version(back, 0) == (1, 2)
    assert users(ct.step(back, a1, 1)) == ["Q1", "Q2b"]
    assert ct.select(back, q2b) == tree or users(ct.select(back, q2b)) == ["Q1", "Q2b"]


def test_removing_a_shown_branch_shows_a_sibling_and_drops_its_descendants():
    tree = ct.from_history(three_turns())
    q1 = ct.user_ids(tree)[0]
    tree, other = ct.add_node(tree, "", "user", [q("Other")])
    tree, _ = ct.add_node(tree, other, "assistant", a("X"))
    gone = ct.remove_node(tree, other)
    assert ct.history(gone) == three_turns() and other not in gone["nodes"]
    assert ct.history(ct.remove_node(tree, q1, select=None)) == [q("Other"), *a("X")]
    assert ct.remove_node(ct.empty_tree(), "nope") == ct.empty_tree()


def test_old_chats_versions_become_sibling_replies():
    history = [q("Hi"), *a("Hello"), q("Colour?"), *a("Blue")]
    versions = {"1": {"items": [a("Red"), a("Blue")], "i": 1}}
    tree = ct.from_history(history, versions)
    assert ct.history(tree) == history and ct.turn_version(tree, 1) == (2, 2)
    red = ct.step(tree, ct.reply_id(tree, 1), -1)
    assert reply_text(group_of(ct.history(red), 1)) == "Red"
    chat = {"messages": history, "versions": versions}
    assert ct.turn_version(past.tree_of(chat), 1) == (2, 2)


def test_the_chatbot_handing_messages_back_reshaped_still_matches():
    tree = ct.from_history([q("    indented\n  code"), *a("ok")])
    back = [{"role": "user", "content": [{"type": "text", "text": "indented\ncode"}], "metadata": None},
            *[dict(m, id="x") for m in a("ok")]]
    assert ct.matches(tree, back) and ct.reconcile(tree, back) == tree
    assert not ct.matches(tree, [q("something else")])


def test_a_corrupt_tree_reads_as_what_is_usable():
    assert ct.valid_tree(None) == ct.empty_tree() and ct.valid_tree({"nodes": 3}) == ct.empty_tree()
    tree = ct.from_history(three_turns())
    broken = json.loads(json.dumps(tree))
    second = ct.path_ids(tree)[2]
    broken["nodes"][second]["role"] = "robot"  # this node and all after it go
    assert ct.history(ct.valid_tree(broken)) == three_turns()[:3]
    broken["kids"][""].append("missing")
    assert ct.history(ct.valid_tree(broken)) == three_turns()[:3]


def test_export_keeps_the_tree_with_stats_and_settings_and_import_reads_it_or_a_flat_file():
    tree = ct.from_history([q("Q1"), *a("A1")])
    q1 = ct.user_ids(tree)[0]
    tree, _ = ct.add_node(tree, q1, "assistant", a("A1b"), stats={"model": "m", "completion_tokens": 2},
                          settings={"temperature": 0.7, "system_prompt": "Be brief."})
    store, cid = past.save_chat(None, None, ct.history(tree), tree, ["Be brief."])
    data = json.loads(json.dumps(past.export_chat(past.get_chat(store, cid))))
    assert data["messages"] == [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1b"}]
    fresh, imported = past.import_chats(None, data)
    back = past.tree_of(past.get_chat(fresh, imported))
    assert ct.turn_version(back, 0) == (2, 2)
    node = back["nodes"][ct.reply_id(back, 0)]
    assert node["stats"]["model"] == "m" and node["settings"]["temperature"] == 0.7
    assert reply_text(group_of(ct.history(ct.step(back, ct.reply_id(back, 0), -1)), 0)) == "A1"
    flat, fid = past.import_chats(None, [{"role": "user", "content": "plain"}, {"role": "assistant", "content": "ok"}])
    assert ct.history(past.tree_of(past.get_chat(flat, fid))) == [q("plain"), {"role": "assistant", "content": "ok"}]
    hostile = {"messages": [], "tree": {"nodes": {"n": {"role": "user", "messages": [
        {"role": "user", "content": "<img src=x>", "metadata": {"title": "t"}, "extra": 1}]}}, "kids": {"": ["n"]}}}
    bad, bid = past.import_chats(None, hostile)
    assert past.get_chat(bad, bid)["messages"] == [{"role": "user", "content": "<img src=x>"}]


PARAMS = ("", 300, 0.0, 1.0, 0, 1.0, 0)


def test_editing_the_first_question_through_the_handlers_keeps_the_original_turns():
    script = FakeScript()
    script.enqueue(["A1"], ["A2"], ["A3"], ["B1"])
    actions = ChatActions(services(script, n_ctx=4096))
    history, tree = [], {}
    for text in ("Q1", "Q2", "Q3"):
        job, history, _, tree = actions.prepare_send(text, history, tree)
        *_, last = list(actions.run_turn(job, tree, *PARAMS))
        history, tree = last[0], last[3]
    original = history

    class Edit:  # what gr.EditData carries
        index, value, previous_value = 0, "Q1 edited", "Q1"

    edited = [dict(m) for m in history]
    edited[0]["content"] = "Q1 edited"
    job, shown, _, tree = actions.on_edit(edited, tree, Edit())
    assert [m["content"] for m in shown] == ["Q1 edited"]
    *_, last = list(actions.run_turn(job, tree, *PARAMS))
    history, tree = last[0], last[3]
    assert reply_text(group_of(history, 0)) == "B1" and len(script.seen[-1].messages) == 1
    nid = ct.user_ids(tree)[0]
    back, tree, line = actions.switch_branch(f"{nid} -1", tree)
    assert back == original and "prompt" in line  # the original branch, and its reply's stats line
    assert actions.switch_branch("nonsense", tree)[0] is not None  # ignored (gr.skip)


def test_a_reply_goes_on_when_its_page_goes_away_and_the_next_page_gets_it():
    script = FakeScript(token_delay=0.01)
    script.enqueue([f" {i}" for i in range(40)])
    actions = ChatActions(services(script, n_ctx=4096))
    job, history, _, tree = actions.prepare_send("Count", [], {})
    saved = json.loads(json.dumps(tree))  # what the page saved when the turn began
    gen = actions.run_turn(job, tree, *PARAMS)
    next(gen), next(gen)
    gen.close()  # the page reloads: Gradio closes the event
    assert ct.pending_ids(saved) and job.id in actions.running
    resumed, *_ = actions.prepare_resume(actions.resolve(saved))
    assert resumed.id == job.id  # the page that comes back follows the same turn
    *_, last = list(actions.run_turn(resumed, actions.resolve(saved), *PARAMS))
    history, tree = last[0], last[3]
    assert reply_text(group_of(history, 0)) == "".join(f" {i}" for i in range(40)).lstrip() or \
        reply_text(group_of(history, 0)).endswith("39")
    assert not ct.pending_ids(tree) and tree["nodes"][ct.reply_id(tree, 0)]["settings"]["max_new_tokens"] == 300
    # a page that comes back after the end gets the finished reply from the saved question
    later = actions.resolve(saved)
    assert ct.history(later) == history and actions.prepare_resume(later)[0] is None


def test_a_forgotten_pending_reply_leaves_the_question():
    actions = ChatActions(services(FakeScript()))
    tree, user = ct.add_node(ct.empty_tree(), "", "user", [q("Lost?")])
    tree, _ = ct.add_node(tree, user, "assistant", [], pending="unknown-turn")
    assert ct.history(actions.resolve(tree)) == [q("Lost?")]


def test_detached_replies_are_bounded(monkeypatch):
    from ui import chat_live

    monkeypatch.setattr(chat_live, "MAX_DETACHED", 0)
    script = FakeScript(token_delay=0.02)
    script.enqueue([f" {i}" for i in range(500)])
    actions = ChatActions(services(script, n_ctx=4096))
    job, _, _, tree = actions.prepare_send("Count", [], {})
    gen = actions.run_turn(job, tree, *PARAMS)
    next(gen), next(gen)
    gen.close()  # over the bound: stopped as if Stop was pressed, kept as far as it got
    live = actions.live.get(job.id)
    with live.cond:
        live.cond.wait_for(lambda: live.ended, timeout=30)
    assert live.state == "stopped" and live.stats["finish_reason"] == "cancelled"
    assert reply_text(live.group).count(" ") < 499


@pytest.mark.parametrize("when", ["streaming", "ended"])
def test_stop_keeps_the_reply_marked_stopped(when):
    script = FakeScript(token_delay=0.01)
    script.enqueue([f" {i}" for i in range(300)] if when == "streaming" else ["Done", "."])
    actions = ChatActions(services(script, n_ctx=4096))
    job, _, _, tree = actions.prepare_send("Go", [], {})
    gen = actions.run_turn(job, tree, *PARAMS)
    next(gen), next(gen)
    if when == "ended":
        live = actions.live.get(job.id)
        deadline = time.monotonic() + 30
        while not live.ended and time.monotonic() < deadline:
            time.sleep(0.01)
    gen.close()
    history, line, tree, _ = actions.finish_stopped(job, tree)
    assert not ct.pending_ids(tree) and ct.history(tree) == history
    assert ("stopped" in line) == (when == "streaming")


def test_where_a_reply_cannot_outlive_its_event_closing_it_stops_the_turn():
    script = FakeScript(token_delay=0.02)
    script.enqueue([f" {i}" for i in range(500)])
    actions = ChatActions(services(script, n_ctx=4096), keep_on_disconnect=False)  # as on ZeroGPU
    job, _, _, tree = actions.prepare_send("Count", [], {})
    gen = actions.run_turn(job, tree, *PARAMS)
    next(gen), next(gen)
    gen.close()
    live = actions.live.get(job.id)
    with live.cond:
        live.cond.wait_for(lambda: live.ended, timeout=30)
    assert live.state == "stopped" and reply_text(live.group).count(" ") < 499


def test_versions_stay_put_while_a_reply_is_coming():
    actions = ChatActions(services(FakeScript()))
    tree = ct.from_history([q("Q1"), *a("A1")])
    q1 = ct.user_ids(tree)[0]
    tree, other = ct.add_node(tree, "", "user", [q("Q1b")])
    tree, _ = ct.add_node(tree, other, "assistant", [], pending="some-turn")
    with pytest.warns(UserWarning, match="still coming"):
        shown, *_ = actions.switch_branch(f"{other} -1", tree)
    assert not isinstance(shown, list)  # gr.skip(): nothing changed
    done = ct.update_node(tree, ct.reply_id(tree, 0), pending=None)
    shown, after, _ = actions.switch_branch(f"{other} -1", done)
    assert ct.user_ids(after) == [q1]
