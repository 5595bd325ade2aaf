"""The GGUF's Jinja chat template, rendered the way llama-cpp-python does (sandboxed, trim_blocks,
HF's tojson, raise_exception, strftime_now), plus what its formatter cannot pass: ``tools``, extra
template variables (e.g. enable_thinking), assistant ``tool_calls`` / ``tool`` messages, and an open
final assistant message (continue_final).

A template that ignores tools (SmolLM2's plain ChatML) would drop them silently; then the tool
definitions go into the system prompt, tool calls into the assistant's text and tool results into a
user turn, in the Hermes/Qwen2.5 tags most small instruct models know.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from backends.base import ChatRequest, Message
from backends.errors import InvalidRequest

RESERVED = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "raise_exception",
                      "strftime_now"})
MEDIA_MARKER = "<__media__>"  # libmtmd's default marker (mtmd_default_marker)
_OPEN = "\x00QUANTLAB-CONTINUE\x00"  # stands for an empty final assistant message


class ChatTemplate:
    def __init__(self, template: str, bos_token: str, eos_token: str):
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                            extensions=[Jinja2ChatFormatter.IgnoreGenerationTags,
                                                        jinja2.ext.loopcontrols])
        env.filters["tojson"] = Jinja2ChatFormatter.tojson
        self.source = template
        self._template = env.from_string(template)
        self.bos_token, self.eos_token = bos_token, eos_token
        self.knows_tools = "tools" in template
        self.knows_tool_calls = "tool_calls" in template
        self.knows_tool_role = "tool" in template

    def render(self, request: ChatRequest) -> str:
        """The prompt text for ``request`` (its messages; not for a raw ``prompt``)."""
        messages = [self._message(m) for m in request.messages]
        tools = [_plain(t) for t in request.tools] or None
        if tools and not self.knows_tools:
            messages = _tools_in_system_prompt(messages, tools)
            tools = None
        kwargs = dict(request.template_kwargs)
        for key in kwargs:
            if not isinstance(key, str) or not key.isidentifier() or key in RESERVED:
                raise InvalidRequest(f"Chat template variable {key!r} cannot be set.", "chat_template_kwargs")
        if not request.continue_final:
            return self._render(messages, tools, kwargs, True)
        final = messages[-1]["content"]
        if final.strip():
            text = self._render(messages, tools, kwargs, False)
            at = text.rfind(final.strip())
            if at >= 0:  # as transformers' continue_final_message: cut right after the message's content
                whole = text[at:at + len(final.lstrip())] == final.lstrip()
                return text[:at + len(final.lstrip() if whole else final.strip())]
        messages[-1] = {**messages[-1], "content": _OPEN}
        text = self._render(messages, tools, kwargs, False)
        at = text.rfind(_OPEN)
        if at < 0:
            raise InvalidRequest("The model's chat template does not show the assistant's message, so it cannot "
                                 "be continued.", "messages")
        return text[:at] + final

    def _render(self, messages: list[dict], tools, kwargs: dict, add_generation_prompt: bool) -> str:
        def raise_exception(message: str):
            raise ValueError(message)

        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        try:
            return self._template.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token,
                                         raise_exception=raise_exception, strftime_now=Jinja2ChatFormatter.strftime_now,
                                         **kwargs)
        except Exception as exc:  # jinja errors: e.g. a template that rejects a system message
            raise InvalidRequest(f"The model's chat template rejected these messages: {exc}", "messages") from exc

    def _message(self, m: Message) -> dict[str, Any]:
        # pictures: libmtmd's media marker where each goes, before the text (``llamacpp_vision``)
        d: dict[str, Any] = {"role": m.role, "content": MEDIA_MARKER * len(m.images) + m.content}
        if m.role == "tool" and not self.knows_tool_role:
            body = m.content if not m.name else f"{m.name}: {m.content}"
            return {"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"}
        if m.role == "tool":
            if m.tool_call_id:
                d["tool_call_id"] = m.tool_call_id
            if m.name:
                d["name"] = m.name
        if m.tool_calls:
            calls = [_tool_call(c) for c in m.tool_calls]
            if self.knows_tool_calls:
                d["tool_calls"] = calls
            else:
                shown = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"].get("name"),
                                                                 "arguments": c["function"].get("arguments")},
                                                                ensure_ascii=False) + "\n</tool_call>" for c in calls)
                d["content"] = (m.content + "\n" if m.content else "") + shown
        return d


def _plain(x: Any) -> Any:
    """Tuples and frozen mappings as the JSON-like lists and dicts a template expects."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "items"):
        return {str(k): _plain(v) for k, v in x.items()}
    return x


def _tool_call(call: Any) -> dict[str, Any]:
    """An OpenAI tool call with ``function.arguments`` parsed into a dict (what HF templates expect:
    they write ``arguments | tojson``); left a string when it is not JSON."""
    c = _plain(call)
    if not isinstance(c, dict):
        raise InvalidRequest("Each tool call must be an object with a function.", "messages")
    fn = dict(c.get("function") or {})
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            fn["arguments"] = json.loads(args) if args.strip() else {}
        except ValueError:
            pass
    c["function"] = fn
    c.setdefault("type", "function")
    return c


def _tools_in_system_prompt(messages: list[dict], tools: Sequence[Any]) -> list[dict]:
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    block = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
             "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
             f"{listed}\n</tools>\n\nFor each function call, return a json object with function name and "
             "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
             '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{block}" if first["content"] else block}] + messages[1:]
    return [{"role": "system", "content": block}] + messages
