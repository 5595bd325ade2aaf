"""The chat's turns as the Chatbot shows them, and the versions Regenerate keeps (no gradio here).

A turn is a user message and the assistant messages after it: an optional "Thinking" block, an
optional note ("2 oldest messages left out ..."), the reply, and the stats line. Every assistant
message but the reply carries a metadata title, so ``normalize_history`` leaves it out of the next
prompt. The chat itself keeps every version in a tree (``ui/chat_tree.py``); the per-turn versions
below are the format chats were saved in before it (read when such a chat is opened). They were kept per turn, keyed by the turn's ordinal (its user message's rank), so a
turn keeps its versions when an earlier turn's messages change in number:
``{"3": {"items": [[message, ...], ...], "i": 1}}``; ``items[i]`` is the one on screen.
"""

from __future__ import annotations

import copy
from typing import Any

from serving.requests import text_of
from ui import chat_tree

THINKING_TITLE = "Thinking"
STATS_TITLE_MARK = "Stats:"
NOTE_TITLE_MARK = "Note:"


def title_of(message: dict) -> str:
    meta = message.get("metadata") if isinstance(message, dict) else None
    return str(meta.get("title") or "") if isinstance(meta, dict) else ""


def is_reply(message: dict) -> bool:
    """The assistant's own text (not a titled annotation: thinking, note, stats)."""
    return message.get("role") == "assistant" and not title_of(message)


def user_indices(history: list[dict]) -> list[int]:
    return [i for i, m in enumerate(history) if m.get("role") == "user"]


def turn_span(history: list[dict], k: int) -> tuple[int, int]:
    """(index of turn ``k``'s user message, end of its assistant group) in ``history``."""
    users = user_indices(history)
    start = users[k]
    end = users[k + 1] if k + 1 < len(users) else len(history)
    return start, end


def turn_of_index(history: list[dict], index: int) -> int | None:
    """The ordinal of the turn holding message ``index`` (None before the first user message)."""
    users = [i for i in user_indices(history) if i <= index]
    return len(users) - 1 if users else None


def last_turn(history: list[dict]) -> int | None:
    users = user_indices(history)
    return len(users) - 1 if users else None


def group_of(history: list[dict], k: int) -> list[dict]:
    start, end = turn_span(history, k)
    return history[start + 1:end]


def reply_text(group: list[dict]) -> str:
    return "".join(text_of(m.get("content")) for m in group if is_reply(m))


def thinking_text(group: list[dict]) -> str:
    return "".join(text_of(m.get("content")) for m in group if title_of(m) == THINKING_TITLE)


def turn_messages(content: str, reasoning: str = "", note: str | None = None, stats_message: dict | None = None,
                  thinking_done: bool = True) -> list[dict]:
    """The assistant group of one turn, in display order."""
    out: list[dict] = []
    if reasoning.strip():
        out.append({"role": "assistant", "content": reasoning.strip(),
                    "metadata": {"title": THINKING_TITLE, "status": "done" if thinking_done else "pending"}})
    if note:
        out.append({"role": "assistant", "content": note, "metadata": {"title": f"{NOTE_TITLE_MARK} {note}"}})
    out.append({"role": "assistant", "content": content})
    if stats_message:
        out.append(stats_message)
    return out


def replace_group(history: list[dict], k: int, group: list[dict]) -> list[dict]:
    start, end = turn_span(history, k)
    return history[:start + 1] + list(group) + history[end:]


# --- versions -----------------------------------------------------------------------------------


def _clean(versions: Any) -> dict:
    return dict(versions) if isinstance(versions, dict) else {}


def add_version(versions: Any, k: int, group: list[dict]) -> dict:
    """A new version of turn ``k`` (a fresh reply or a regenerated one), now the one shown."""
    versions = _clean(versions)
    entry = versions.get(str(k)) or {"items": [], "i": 0}
    items = list(entry["items"]) + [copy.deepcopy(group)]
    versions[str(k)] = {"items": items, "i": len(items) - 1}
    return versions


def set_version(versions: Any, k: int, group: list[dict]) -> dict:
    """Turn ``k``'s shown version changed in place (Continue, an edited reply, Stop's stats)."""
    versions = _clean(versions)
    entry = versions.get(str(k))
    if not entry or not entry.get("items"):
        return add_version(versions, k, group)
    items = list(entry["items"])
    i = min(max(int(entry.get("i", 0)), 0), len(items) - 1)
    items[i] = copy.deepcopy(group)
    versions[str(k)] = {"items": items, "i": i}
    return versions


def ensure_version(versions: Any, history: list[dict], k: int) -> dict:
    """Turn ``k``'s current reply recorded as a version if it is not yet (a chat from before
    versions existed, or an imported one), so Regenerate keeps it."""
    versions = _clean(versions)
    group = group_of(history, k)
    if str(k) not in versions and any(is_reply(m) for m in group):
        versions = add_version(versions, k, group)
    return versions


def drop_versions_from(versions: Any, k: int) -> dict:
    """Forget the versions of turn ``k`` and every later one (their question changed or went)."""
    return {key: v for key, v in _clean(versions).items() if key.isdigit() and int(key) < k}


def version_count(versions: Any, k: int | None) -> tuple[int, int]:
    """(shown version, 1-based; number of versions) of turn ``k``; (0, 0) without versions.
    ``versions`` may also be a conversation tree (``ui/chat_tree.py``): then the visible path's turn."""
    if chat_tree.is_tree(versions):
        return chat_tree.turn_version(versions, k)
    entry = _clean(versions).get(str(k)) if k is not None else None
    if not entry or not entry.get("items"):
        return 0, 0
    return int(entry.get("i", 0)) + 1, len(entry["items"])


def show_version(history: list[dict], versions: Any, k: int, step: int) -> tuple[list[dict], dict]:
    """Move turn ``k`` ``step`` versions back or forth (clamped) and put that one on screen."""
    versions = _clean(versions)
    entry = versions.get(str(k))
    if not entry or not entry.get("items"):
        return history, versions
    i = min(max(int(entry.get("i", 0)) + step, 0), len(entry["items"]) - 1)
    versions[str(k)] = {"items": entry["items"], "i": i}
    return replace_group(history, k, copy.deepcopy(entry["items"][i])), versions
