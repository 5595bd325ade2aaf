"""One walk over a parsed request body, before any field of it is read: every string in it (keys
too: tool descriptions, enum values, a tool message's name, tool-call arguments, not only message
content) must be valid Unicode, and nothing may nest deeper than MAX_BODY_DEPTH.

JSON allows a lone UTF-16 surrogate ("\\ud800"), which Python decodes into a str that cannot be
encoded as UTF-8: left in, it fails wherever the text is next encoded (a chat template, a tokenizer,
a log line) as a 500. A body nested hundreds of levels deep parses, then overflows Python's recursion
in the first recursive consumer (a schema converter, a template's tojson). Both become one 400 here,
naming where. Iterative: a deep body cannot recurse here.
"""

from __future__ import annotations

from typing import Any

from backends.errors import InvalidRequest

MAX_BODY_DEPTH = 64  # objects/arrays inside one another; a tool's JSON schema gets MAX_SCHEMA_DEPTH of these


def _bad_char(text: str) -> int | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_body(body: Any, max_depth: int = MAX_BODY_DEPTH, at: tuple = ()) -> None:
    """InvalidRequest (naming the top-level field) at the first string that is not valid Unicode or
    the first object/array deeper than ``max_depth``. ``at``: where ``body`` sits in the request, for
    JSON decoded from one of its strings (a tool call's arguments)."""
    todo: list[tuple[Any, int, tuple]] = [(body, 0, at)]
    while todo:
        node, depth, path = todo.pop()
        if isinstance(node, str):
            at = _bad_char(node)
            if at is not None:
                raise InvalidRequest(f"{_where(path)} contains an invalid character at position {at} (a lone UTF-16 "
                                     "surrogate): send valid Unicode text.", _param(path))
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth >= max_depth:
            raise InvalidRequest(f"{_where(path)} nests more than {max_depth} levels deep; this server accepts at most "
                                 f"{max_depth}.", _param(path))
        if isinstance(node, list):
            todo += [(v, depth + 1, (*path, i)) for i, v in enumerate(node) if isinstance(v, (str, dict, list))]
            continue
        for key, value in node.items():
            at = _bad_char(key)
            if at is not None:
                raise InvalidRequest(f"A key in {_where(path)} contains an invalid character at position {at} (a lone "
                                     "UTF-16 surrogate): send valid Unicode text.", _param(path) or "body")
            if isinstance(value, (str, dict, list)):
                todo.append((value, depth + 1, (*path, key)))


def _where(path: tuple) -> str:
    if not path:
        return "The request body"
    out = str(path[0])
    for p in path[1:]:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out[:200]


def _param(path: tuple) -> str | None:
    return str(path[0])[:100] if path else None
