"""Tool calls out of generated text, in the formats chat templates teach models to write:

- Hermes / Qwen / SmolLM: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (one or more;
  the JSON may also be a list of calls);
- Llama 3: the whole reply is ``{"name": ..., "parameters": {...}}`` (or ``"arguments"``), maybe after
  ``<|python_tag|>``, or a list of those;
- Mistral: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (or ``[TOOL_CALLS]name[ARGS]{...}``).

``ToolCallStream`` does the same on a stream: text that is certainly content is released at once;
from the moment a call may be starting, the rest is held and parsed at the end. A call whose name is
not one of the request's tools, or whose JSON does not parse, stays content: never a made-up call.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from backends.base import Constraint
from backends.errors import InvalidRequest
from backends.stops import partial_suffix

MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_LIST_OF_OBJECTS = re.compile(r"\[\s*\{")
_MISTRAL_ARGS = re.compile(r"\s*([A-Za-z0-9_.\-]+)\[ARGS\]", re.S)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text
    id: str = ""

    def openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def tool_names(tools: Iterable[Any]) -> list[str]:
    return [t["function"]["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]


def _calls_from_json(value: Any, names: Sequence[str]) -> list[ToolCall] | None:
    """ToolCalls from a decoded {"name", "arguments"|"parameters"} object or a list of them; None
    when it is not that shape or names a function the request did not offer."""
    items = value if isinstance(value, list) else [value]
    if not items:
        return None
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        if "function" in item and isinstance(item["function"], dict):  # {"type": "function", "function": {...}}
            item = item["function"]
        name = item["name"]
        if names and name not in names:
            return None
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):  # already JSON text (OpenAI's own shape)
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False), new_call_id()))
    return calls


def _first_json(text: str) -> tuple[Any, int] | None:
    """The JSON value at the start of ``text`` (after whitespace) and where it ends."""
    s = text.lstrip()
    try:
        value, end = json.JSONDecoder().raw_decode(s)
    except ValueError:
        return None
    return value, end + (len(text) - len(s))


def parse_tool_calls(text: str, names: Sequence[str]) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a whole reply. No calls found: (text, [])."""
    if "<tool_call>" in text:
        calls: list[ToolCall] = []
        for body in _TAGGED.findall(text):
            found = _first_json(body)
            got = _calls_from_json(found[0], names) if found else None
            if got is None:
                return text, []
            calls += got
        content = text[: text.index("<tool_call>")].strip()
        return content, calls
    if "[TOOL_CALLS]" in text:
        head, _, rest = text.partition("[TOOL_CALLS]")
        calls = []
        while rest.strip():
            m = _MISTRAL_ARGS.match(rest)
            if m:  # [TOOL_CALLS]name[ARGS]{...}
                found = _first_json(rest[m.end():])
                got = _calls_from_json({"name": m.group(1), "arguments": found[0]}, names) if found else None
                rest = rest[m.end() + found[1]:] if found else ""
            else:
                found = _first_json(rest)
                got = _calls_from_json(found[0], names) if found else None
                rest = rest[found[1]:] if found else ""
            if got is None:
                return text, []
            calls += got
            rest = rest.lstrip().removeprefix("[TOOL_CALLS]")
        return head.strip(), calls
    body = text.strip().removeprefix("<|python_tag|>")
    if body.startswith(("{", "[")):
        found = _first_json(body)
        if found and not body[found[1]:].strip().strip(";"):
            got = _calls_from_json(found[0], names)
            if got:
                return "", got
    return text, []


class ToolCallStream:
    """Streamed text -> content released as soon as it cannot be (part of) a tool call; the held
    rest is parsed by ``finish()``."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self._started = False  # seen something other than whitespace
        self._capturing = False
        self._held = ""

    def feed(self, text: str) -> str:
        self._held += text
        if self._capturing:
            return ""
        if not self._started:
            stripped = self._held.lstrip()
            if not stripped:
                return ""
            if (stripped.startswith("{") or _LIST_OF_OBJECTS.match(stripped)
                    or any(stripped.startswith(m) for m in MARKERS)):
                self._capturing = True
                return ""
            if any(m.startswith(stripped) for m in MARKERS) or not stripped.lstrip("[").strip():
                return ""  # may still become a marker or a list of calls
            self._started = True
        cut = self._held.find("<tool_call>")
        if cut < 0:
            cut = self._held.find("[TOOL_CALLS]")
        if cut >= 0:
            out, self._held, self._capturing = self._held[:cut], self._held[cut:], True
            return out
        hold = partial_suffix(self._held, *MARKERS[:2])
        out = self._held[: len(self._held) - hold]
        self._held = self._held[len(out):]
        return out

    @property
    def capturing(self) -> bool:
        return self._capturing

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content still held, the calls). Held text that holds no valid call is content."""
        held, self._held = self._held, ""
        if not self._capturing:
            return held, []
        content, calls = parse_tool_calls(held, self.names)
        return (content, calls) if calls else (held, [])


def call_schema(tools: Sequence[dict], only: str | None = None) -> dict:
    """The JSON Schema of one call of one of ``tools`` (or of the one named ``only``):
    {"name": <that name>, "arguments": <its parameters' schema>}. Constraining the output to it
    guarantees a well-formed call (tool_choice "required" or a named function)."""
    options = []
    for t in tools:
        fn = t["function"]
        if only is not None and fn["name"] != only:
            continue
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        options.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                        "required": ["name", "arguments"], "additionalProperties": False})
    return options[0] if len(options) == 1 else {"anyOf": options}


def output_constraint(tools: tuple[Any, ...], forced: bool, only: str | None,
                      fmt: Constraint | None) -> Constraint | None:
    """The constraint of a reply that may call ``tools`` (chat shape) and has the format ``fmt``.
    A forced call (tool_choice required or named, ``only`` naming it) is constrained to one call:
    the format is for text replies, and this one is a call. On auto with a format, the grammar
    allows either a call (written as the bare {"name", "arguments"} object the tool-call parser
    reads) or the format, so tools stay possible. Without tools: the format alone."""
    if not tools:
        return fmt
    call = call_schema(tools, only)
    if forced:
        return Constraint("json_schema", json.dumps(call), param="tools")
    if fmt is None:
        return None
    if fmt.kind == "grammar":
        raise InvalidRequest("A grammar cannot be combined with tools.", fmt.param)
    text = json.loads(fmt.schema) if fmt.kind == "json_schema" and fmt.schema else {"type": "object"}
    return Constraint("json_schema", json.dumps({"anyOf": [call, text]}), param=fmt.param)
