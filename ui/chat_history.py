"""Past chats: the store the browser keeps (gr.BrowserState) or ``--chat-dir`` keeps per user
(no gradio here). One JSON value:

    {"current": "<id>", "chats": {"<id>": {"id", "title", "renamed", "created", "updated",
                                           "messages": [Chatbot messages], "tree": {...},
                                           "params": [system prompt, sampling values in /chat's order]}}}

``tree`` is the conversation tree (``ui/chat_tree.py``: every edited question and regenerated reply
kept as a branch); ``messages`` is its visible path, kept beside it for the chat list's search and
for older readers. Chats saved before the tree have ``versions`` (per-turn reply versions) instead:
``tree_of`` turns them into a tree when such a chat is opened.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from backends.errors import InvalidRequest
from serving.requests import normalize_history, text_of
from ui import chat_tree as ct

TITLE_CHARS = 48
MAX_CHATS = 200  # the oldest beyond this are dropped (localStorage holds a few MB)


def empty_store() -> dict:
    return {"current": None, "chats": {}}


def valid_store(store: Any) -> dict:
    """``store`` if it has the right shape, else an empty one (a corrupt or old value)."""
    if isinstance(store, dict) and isinstance(store.get("chats"), dict):
        chats = {k: c for k, c in store["chats"].items() if isinstance(c, dict) and isinstance(c.get("messages"), list)}
        return {"current": store.get("current") if store.get("current") in chats else None, "chats": chats}
    return empty_store()


def make_chat(messages: list | None = None, params: list | None = None, title: str = "", tree: dict | None = None) -> dict:
    now = time.time()
    tree = ct.valid_tree(tree) if ct.is_tree(tree) and tree.get("nodes") else ct.from_history(messages or [])
    chat = {"id": uuid.uuid4().hex[:12], "title": title, "renamed": bool(title), "created": now, "updated": now,
            "messages": ct.history(tree), "tree": tree, "params": list(params or [])}
    if not title:
        chat["title"] = auto_title(chat["messages"])
    return chat


def auto_title(messages: list) -> str:
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user":
            text = " ".join(text_of(m.get("content")).split())
            if text:
                return text if len(text) <= TITLE_CHARS else text[:TITLE_CHARS - 1] + "…"
    return "New chat"


def save_chat(store: Any, chat_id: str | None, messages: list, tree: dict | None, params: list | None) -> tuple[dict, str]:
    """Write the chat on screen (its ``tree``; without one, its ``messages``) into the store (made if
    ``chat_id`` is unknown); it becomes current. Returns (store, its id)."""
    store = valid_store(store)
    chats = dict(store["chats"])
    chat = dict(chats.get(chat_id) or make_chat())
    if chat_id:  # keep the id the page knows, even if this copy of the store has not seen it yet
        chat["id"] = chat_id
    if isinstance(tree, dict) and tree and not ct.is_tree(tree):  # a caller's old per-turn versions
        chat["versions"] = dict(tree)
        tree = ct.from_history(list(messages or []), tree)
    else:
        chat.pop("versions", None)
    # the tree is the truth (while a reply streams, the Chatbot shows more than its pending node);
    # messages alone (no tree) make one
    tree = ct.valid_tree(tree) if ct.is_tree(tree) and tree["nodes"] else ct.from_history(list(messages or []))
    chat["messages"] = ct.history(tree)
    chat["tree"] = tree
    if params is not None:
        chat["params"] = list(params)
    if not chat.get("renamed"):
        chat["title"] = auto_title(chat["messages"])
    chat["updated"] = time.time()
    chats[chat["id"]] = chat
    if len(chats) > MAX_CHATS:
        for old in sorted(chats.values(), key=lambda c: c.get("updated", 0))[:len(chats) - MAX_CHATS]:
            if old["id"] != chat["id"]:
                chats.pop(old["id"])
    return {"current": chat["id"], "chats": chats}, chat["id"]


def new_chat(store: Any, params: list | None = None) -> tuple[dict, str]:
    """An empty chat (with the current settings), now current."""
    store = valid_store(store)
    chat = make_chat(params=params)
    return {"current": chat["id"], "chats": {**store["chats"], chat["id"]: chat}}, chat["id"]


def tree_of(chat: dict | None) -> dict:
    """The chat's conversation tree: the saved one when it shows the saved messages, else one built
    from the messages (and the per-turn ``versions`` of a chat saved before the tree)."""
    chat = chat or {}
    tree = chat.get("tree")
    if ct.is_tree(tree) and ct.matches(ct.valid_tree(tree), chat.get("messages") or []):
        return ct.valid_tree(tree)
    return ct.from_history(chat.get("messages") or [], chat.get("versions"))


def get_chat(store: Any, chat_id: str | None) -> dict | None:
    return valid_store(store)["chats"].get(chat_id)


def current_chat(store: Any) -> dict | None:
    store = valid_store(store)
    return store["chats"].get(store["current"]) if store["current"] else None


def rename_chat(store: Any, chat_id: str | None, title: str) -> dict:
    store = valid_store(store)
    title = " ".join((title or "").split())
    if chat_id not in store["chats"]:
        raise InvalidRequest("There is no chat to rename yet: send a message first.", "title")
    if not title:
        raise InvalidRequest("Type a new name for the chat first.", "title")
    chat = {**store["chats"][chat_id], "title": title[:200], "renamed": True}
    return {"current": store["current"], "chats": {**store["chats"], chat_id: chat}}


def delete_chat(store: Any, chat_id: str | None) -> tuple[dict, str | None]:
    """The store without ``chat_id``; the most recently updated chat left becomes current (None if none)."""
    store = valid_store(store)
    chats = {k: c for k, c in store["chats"].items() if k != chat_id}
    rest = sorted(chats.values(), key=lambda c: c.get("updated", 0), reverse=True)
    current = store["current"] if store["current"] in chats else (rest[0]["id"] if rest else None)
    return {"current": current, "chats": chats}, current


def chat_choices(store: Any, query: str = "") -> list[tuple[str, str]]:
    """(label, id) of the chats whose title or messages contain ``query``, most recent first."""
    q = (query or "").strip().lower()
    out = []
    for chat in sorted(valid_store(store)["chats"].values(), key=lambda c: c.get("updated", 0), reverse=True):
        if q and q not in chat.get("title", "").lower() and not any(
                q in text_of(m.get("content")).lower() for m in chat["messages"] if isinstance(m, dict)):
            continue
        when = time.strftime("%d %b %H:%M", time.localtime(chat.get("updated", 0)))
        out.append((f"{chat.get('title') or 'New chat'} · {when}", chat["id"]))
    return out


# --- export / import ----------------------------------------------------------------------------


def export_chat(chat: dict) -> dict:
    """One chat as a file: its title, its visible conversation as plain {role, content} messages,
    its settings, and its whole tree (every branch, each reply with its stats: model, quantization,
    timings, and the sampling settings it was generated with). ``chats_in`` reads it back."""
    return {"title": chat.get("title", ""), "messages": plain_messages(chat.get("messages")),
            "params": chat.get("params", []), "tree": export_tree(tree_of(chat))}


def export_tree(tree: dict) -> dict:
    """The tree as a file keeps it: replies still generating are left out."""
    for nid in ct.pending_ids(tree):
        if nid in tree["nodes"]:
            tree = ct.remove_node(tree, nid)
    return tree


def export_all(store: Any) -> dict:
    store = valid_store(store)
    chats = sorted(store["chats"].values(), key=lambda c: c.get("updated", 0), reverse=True)
    return {"chats": [export_chat(c) for c in chats]}


def plain_messages(history: Any) -> list[dict]:
    """The conversation without UI annotations (thinking, notes, stats)."""
    return [{"role": m.role, "content": m.content} for m in normalize_history(history)]


def chats_in(data: Any) -> list[dict]:
    """The chats an imported JSON value holds: a list of messages, {"messages": [...]} (one chat,
    optionally with "title", "params" and its "tree"), or {"chats": [...]} (an export of all)."""
    if isinstance(data, dict) and isinstance(data.get("chats"), list):
        items = data["chats"]
    elif isinstance(data, dict) and ("messages" in data or "history" in data):
        items = [data]
    elif isinstance(data, list):
        items = [{"messages": data}]
    else:
        raise InvalidRequest("That file holds no conversation: expected a list of {role, content} messages, "
                             "{\"messages\": [...]} or {\"chats\": [...]}.")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise InvalidRequest("Each chat in the file must be an object with its messages.")
        params = item.get("params") if isinstance(item.get("params"), list) else []
        title = item.get("title") if isinstance(item.get("title"), str) else ""
        tree = imported_tree(item.get("tree"))
        if tree["nodes"]:
            out.append(make_chat(params=params, title=title[:200], tree=tree))
            continue
        messages = plain_messages(item.get("messages", item.get("history")))
        out.append(make_chat(messages, params, title=title[:200]))
    if not out:
        raise InvalidRequest("That file holds no chat.")
    return out


def _scalars(value: Any) -> dict | None:
    if not isinstance(value, dict):
        return None
    return {str(k)[:64]: v for k, v in value.items() if isinstance(v, (str, int, float, bool)) or v is None} or None


def imported_tree(value: Any) -> dict:
    """A tree from a file, re-made from what the Chatbot shows only: each message's role, text and
    its title (thinking, note, stats); a reply's stats and settings as plain values."""
    tree = ct.valid_tree(value)
    for nid, node in tree["nodes"].items():
        messages = []
        for m in node["messages"]:
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                continue
            clean = {"role": "user" if node["role"] == "user" else "assistant", "content": text_of(m.get("content"))}
            meta = m.get("metadata") if isinstance(m.get("metadata"), dict) else {}
            if meta.get("title") and node["role"] == "assistant":
                clean["metadata"] = {"title": str(meta["title"])[:500]}
                if meta.get("status"):  # a block open when saved is shown closed
                    clean["metadata"]["status"] = "done"
            messages.append(clean)
        tree["nodes"][nid] = {"id": nid, "parent": node["parent"], "role": node["role"], "messages": messages,
                              **{k: v for k in ("stats", "settings") if (v := _scalars(node.get(k)))}}
    return tree


def import_chats(store: Any, data: Any) -> tuple[dict, str]:
    """Add the chats in ``data`` to the store; the first one becomes current."""
    store = valid_store(store)
    chats = chats_in(data)
    merged = {**store["chats"], **{c["id"]: c for c in chats}}
    return {"current": chats[0]["id"], "chats": merged}, chats[0]["id"]
