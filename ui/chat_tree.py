"""The conversation tree behind the Chat tab (no gradio here).

Every edit of a question and every Regenerate makes a sibling at that turn instead of overwriting
it, so no earlier conversation is ever lost; the Chatbot shows one path through the tree (the
*visible path*), and the Gradio API's ``/chat`` history is exactly that path's messages.

A node is one row of the Chatbot: a user node holds one question; an assistant node holds the
messages after it (thinking, note, reply, stats line: ``ui/chat_turns.py``). A node's children are
the alternatives that follow it, in the order they were made; ``sel`` says which child is shown
after each node (the key "" is the root, before the first question). One JSON value::

    {"nodes": {"<id>": {"id", "parent": "<id>" | "", "role": "user" | "assistant",
                        "messages": [Chatbot messages], "stats": {...}?, "settings": {...}?,
                        "pending": "<turn id>"?}},
     "kids": {"<parent id or ''>": ["<id>", ...]}, "sel": {"<parent id or ''>": "<id>"}}

``stats`` is a reply's request figures (model and quantization included), ``settings`` the system
prompt and sampling values it was generated with, ``pending`` the id of the turn still generating
it (``ui/chat_live.py``), so a reloaded page can pick it up.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from serving.requests import text_of

ROOT = ""


def empty_tree() -> dict:
    return {"nodes": {}, "kids": {ROOT: []}, "sel": {}}


def is_tree(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("nodes"), dict) and isinstance(value.get("kids"), dict)


def valid_tree(value: Any) -> dict:
    """``value`` as a consistent tree (a copy): nodes whose parent is gone, wrong roles or messages
    that are not a list are dropped with their descendants; an unusable value is an empty tree."""
    if not is_tree(value):
        return empty_tree()
    raw = value["nodes"]
    kids_in = value.get("kids") or {}
    out = empty_tree()

    def walk(parent: str) -> None:
        for nid in kids_in.get(parent) or []:
            node = raw.get(nid) if isinstance(nid, str) else None
            if (not isinstance(node, dict) or node.get("role") not in ("user", "assistant")
                    or not isinstance(node.get("messages"), list) or nid in out["nodes"]):
                continue
            out["nodes"][nid] = {**copy.deepcopy(node), "id": nid, "parent": parent}
            out["kids"].setdefault(parent, []).append(nid)
            walk(nid)

    walk(ROOT)
    sel = value.get("sel") if isinstance(value.get("sel"), dict) else {}
    out["sel"] = {k: v for k, v in sel.items() if v in out["kids"].get(k, [])}
    return out


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _copy(tree: Any) -> dict:
    return copy.deepcopy(tree) if is_tree(tree) else empty_tree()


# --- reading ------------------------------------------------------------------------------------


def children(tree: dict, parent: str) -> list[str]:
    return list(tree["kids"].get(parent) or [])


def shown_child(tree: dict, parent: str) -> str | None:
    """The child shown after ``parent``: the selected one, else the newest (None: the path ends)."""
    kids = children(tree, parent)
    if not kids:
        return None
    chosen = tree["sel"].get(parent)
    return chosen if chosen in kids else kids[-1]


def path_ids(tree: dict) -> list[str]:
    """The node ids of the visible path, first question first."""
    out, parent = [], ROOT
    while (nid := shown_child(tree, parent)) is not None and nid not in out:
        out.append(nid)
        parent = nid
    return out


def history(tree: dict) -> list[dict]:
    """The visible path's messages: what the Chatbot shows and the model is sent."""
    return [copy.deepcopy(m) for nid in path_ids(tree) for m in tree["nodes"][nid]["messages"]]


def last_id(tree: dict) -> str:
    ids = path_ids(tree)
    return ids[-1] if ids else ROOT


def node_at(tree: dict, index: int) -> str | None:
    """The id of the node holding message ``index`` of the visible path."""
    at = 0
    for nid in path_ids(tree):
        n = len(tree["nodes"][nid]["messages"])
        if at <= index < at + n:
            return nid
        at += n
    return None


def siblings(tree: dict, nid: str) -> tuple[int, int]:
    """(1-based position of ``nid`` among its parent's children, how many there are)."""
    node = tree["nodes"].get(nid)
    if node is None:
        return 0, 0
    kids = children(tree, node["parent"])
    return kids.index(nid) + 1, len(kids)


def user_ids(tree: dict) -> list[str]:
    """The visible path's question nodes; turn ``k`` is the ``k``-th of them."""
    return [nid for nid in path_ids(tree) if tree["nodes"][nid]["role"] == "user"]


def reply_id(tree: dict, k: int | None) -> str | None:
    """The assistant node shown after the visible path's ``k``-th question (None without one)."""
    users = user_ids(tree)
    if k is None or not 0 <= k < len(users):
        return None
    nid = shown_child(tree, users[k])
    return nid if nid and tree["nodes"][nid]["role"] == "assistant" else None


def turn_version(tree: dict, k: int | None) -> tuple[int, int]:
    """(shown version, number of versions) of turn ``k``'s reply; (0, 0) without a reply."""
    nid = reply_id(tree, k)
    return siblings(tree, nid) if nid else (0, 0)


def pending_ids(tree: dict) -> list[str]:
    return [nid for nid, node in tree["nodes"].items() if node.get("pending")]


def row_map(tree: dict) -> list[dict | None]:
    """Per Chatbot row (consecutive messages of one role share a row), the version arrows it shows:
    ``{"node", "i", "n"}`` where the row's node has siblings, else None."""
    rows: list[dict | None] = []
    last_role = None
    for nid in path_ids(tree):
        node = tree["nodes"][nid]
        if not node["messages"]:
            continue
        i, n = siblings(tree, nid)
        entry = {"node": nid, "i": i, "n": n} if n > 1 else None
        if node["role"] == last_role and rows:
            rows[-1] = rows[-1] or entry
        else:
            rows.append(entry)
        last_role = node["role"]
    return rows


def _signature(messages: list) -> list[tuple]:
    out = []
    for m in messages or []:
        if not isinstance(m, dict):
            continue
        meta = m.get("metadata") if isinstance(m.get("metadata"), dict) else {}
        text = " ".join(text_of(m.get("content")).split())  # the Chatbot dedents and trims text
        out.append((m.get("role"), text, " ".join(str(meta.get("title") or "").split())))
    return out


def matches(tree: Any, messages: list) -> bool:
    """Whether the visible path is ``messages`` (as the Chatbot hands them back: content may come
    back as a list of parts, metadata with extra keys)."""
    return is_tree(tree) and _signature(history(tree)) == _signature(messages)


# --- building -----------------------------------------------------------------------------------


def from_history(messages: list, versions: Any = None) -> dict:
    """A tree holding ``messages`` as one path: each question a user node, the messages after it one
    assistant node. ``versions`` (the per-turn reply versions chats kept before the tree,
    ``{"<turn>": {"items": [group, ...], "i": shown}}``) become sibling replies."""
    tree = empty_tree()
    versions = versions if isinstance(versions, dict) else {}
    parent, k = ROOT, -1
    for m in messages or []:
        if not isinstance(m, dict):
            continue
        role = "user" if m.get("role") == "user" else "assistant"
        last = tree["nodes"].get(parent)
        if last is not None and last["role"] == role == "assistant":
            last["messages"].append(copy.deepcopy(m))
            continue
        if role == "user":
            k += 1
        tree, parent = add_node(tree, parent, role, [m])
    if versions:
        tree = _add_old_versions(tree, versions)
    return tree


def _add_old_versions(tree: dict, versions: dict) -> dict:
    for k, nid in enumerate(user_ids(tree)):
        entry = versions.get(str(k))
        reply = shown_child(tree, nid)
        if not isinstance(entry, dict) or not isinstance(entry.get("items"), list) or reply is None:
            continue
        items = [g for g in entry["items"] if isinstance(g, list)]
        shown = min(max(int(entry.get("i", 0) or 0), 0), len(items) - 1) if items else 0
        kids: list[str] = []
        for j, group in enumerate(items):
            if j == shown:
                kids.append(reply)
                continue
            other = _new_id()
            tree["nodes"][other] = {"id": other, "parent": nid, "role": "assistant",
                                    "messages": copy.deepcopy(group)}
            kids.append(other)
        if reply in kids:
            tree["kids"][nid] = kids
            tree["sel"][nid] = reply
    return tree


def add_node(tree: Any, parent: str, role: str, messages: list, **extra: Any) -> tuple[dict, str]:
    """A new child of ``parent`` (appended after its siblings), now the shown one. Returns (tree, id)."""
    tree = _copy(tree)
    nid = _new_id()
    tree["nodes"][nid] = {"id": nid, "parent": parent, "role": role, "messages": copy.deepcopy(list(messages)),
                          **{k: v for k, v in extra.items() if v is not None}}
    tree["kids"].setdefault(parent, []).append(nid)
    tree["sel"][parent] = nid
    return tree, nid


def update_node(tree: Any, nid: str, messages: list | None = None, **fields: Any) -> dict:
    """``nid`` with new ``messages`` and/or fields (a field set to None is removed)."""
    tree = _copy(tree)
    node = tree["nodes"].get(nid)
    if node is None:
        return tree
    if messages is not None:
        node["messages"] = copy.deepcopy(list(messages))
    for key, value in fields.items():
        if value is None:
            node.pop(key, None)
        else:
            node[key] = copy.deepcopy(value)
    return tree


def remove_node(tree: Any, nid: str, select: str | None = None) -> dict:
    """``tree`` without ``nid`` and everything after it. If it was shown, ``select`` (a sibling) or
    the sibling before it (else after it) is shown instead, so no branch becomes unreachable."""
    tree = _copy(tree)
    node = tree["nodes"].get(nid)
    if node is None:
        return tree
    parent = node["parent"]
    kids = children(tree, parent)
    pos = kids.index(nid)
    rest = [k for k in kids if k != nid]
    tree["kids"][parent] = rest
    if shown_child(tree, parent) is None or tree["sel"].get(parent) == nid or tree["sel"].get(parent) not in rest:
        tree["sel"].pop(parent, None)
        if select in rest:
            tree["sel"][parent] = select
        elif rest:
            tree["sel"][parent] = rest[max(pos - 1, 0)]
    stack = [nid]
    while stack:
        cur = stack.pop()
        stack.extend(tree["kids"].pop(cur, []))
        tree["nodes"].pop(cur, None)
        tree["sel"].pop(cur, None)
    return tree


def step(tree: Any, nid: str, delta: int) -> dict:
    """Show the sibling ``delta`` places from ``nid`` (clamped); its whole continuation follows."""
    tree = _copy(tree)
    node = tree["nodes"].get(nid)
    if node is None:
        return tree
    kids = children(tree, node["parent"])
    i = min(max(kids.index(nid) + int(delta), 0), len(kids) - 1)
    tree["sel"][node["parent"]] = kids[i]
    return tree


def select(tree: Any, nid: str) -> dict:
    """Show ``nid`` and the path to it."""
    tree = _copy(tree)
    while nid in tree["nodes"]:
        parent = tree["nodes"][nid]["parent"]
        tree["sel"][parent] = nid
        nid = parent
    return tree


def reconcile(tree: Any, messages: list) -> dict:
    """The tree whose visible path is ``messages``: ``tree`` itself when it already shows them,
    else one built from them (a chat edited outside the tree, an API caller's history)."""
    tree = valid_tree(tree)
    return tree if matches(tree, messages) else from_history(messages)
