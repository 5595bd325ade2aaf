"""A request's prompt token ids for a transformers tokenizer: the raw prompt as is, or the messages
through the model's chat template (tools, tool calls and results, template variables, continue).

A template that does not mention ``tools`` (SmolLM2's plain ChatML, for one) gets the tool definitions
in a system message instead, in the Hermes format (``<tools>`` ... ``<tool_call>``), and earlier tool
calls and results as text in that format: a model never sees tools silently dropped.
"""

from __future__ import annotations

import json
from typing import Any

from backends.base import ChatRequest, Message
from backends.errors import InvalidRequest

# apply_chat_template's own parameters: a template variable of that name would change how it runs.
_RESERVED = frozenset({"conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
                       "continue_final_message", "tokenize", "padding", "truncation", "max_length",
                       "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"})

TOOLS_SYSTEM = (
    "You may call one or more functions to assist with the user query. The functions you can call are "
    "described in JSON within <tools></tools> tags:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, reply with a JSON object holding its name and arguments within "
    "<tool_call></tool_call> tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n"
    "</tool_call>"
)


def template_knows_tools(tok) -> bool:
    template = tok.chat_template
    return "tools" in (template if isinstance(template, str) else json.dumps(template, default=str))


def _arguments(raw: Any) -> Any:
    """HF templates expect a call's arguments as a mapping; OpenAI sends a JSON string."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _call(call: Any) -> dict:
    if not isinstance(call, dict):
        raise InvalidRequest("Each tool call must be an object with a function name and arguments.", "messages")
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest("A tool call lacks its function name.", "messages")
    out = {"type": "function", "function": {"name": fn["name"], "arguments": _arguments(fn.get("arguments", {}))}}
    if call.get("id"):
        out["id"] = call["id"]
    return out


def _native(m: Message) -> dict:
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["tool_calls"] = [_call(c) for c in m.tool_calls]
    if m.role == "tool":
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.name:
            d["name"] = m.name
    return d


def _as_text(m: Message) -> dict:
    """A message for a template without tool support: calls and results written out in Hermes' tags."""
    if m.role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{m.content}\n</tool_response>"}
    content = m.content
    for call in m.tool_calls:
        fn = _call(call)["function"]
        content += ("\n" if content else "") + "<tool_call>\n" + json.dumps(
            {"name": fn["name"], "arguments": fn["arguments"]}, ensure_ascii=False) + "\n</tool_call>"
    return {"role": m.role, "content": content}


def _tools(request: ChatRequest) -> list[dict]:
    for t in request.tools:
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest('Each tool must be {"type": "function", "function": {"name": ..., '
                                 '"parameters": ...}}.', "tools")
    return list(request.tools)


def template_kwargs(request: ChatRequest) -> dict[str, Any]:
    kwargs = dict(request.template_kwargs)
    for key in kwargs:
        if not isinstance(key, str) or not key.isidentifier() or key in _RESERVED:
            raise InvalidRequest(f"{key!r} cannot be a chat template variable.", "template_kwargs")
    return kwargs


def conversation(tok, request: ChatRequest) -> tuple[list[dict], dict[str, Any]]:
    """The messages as the template takes them and apply_chat_template's extra keyword arguments."""
    tools = _tools(request)
    native = template_knows_tools(tok)
    messages = [(_native if native else _as_text)(m) for m in request.messages]
    kwargs = template_kwargs(request)
    if tools and native:
        kwargs["tools"] = tools
    elif tools:
        text = TOOLS_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + text}
        else:
            messages.insert(0, {"role": "system", "content": text})
    return messages, kwargs


def prompt_ids(tok, request: ChatRequest) -> list[int]:
    if request.prompt is not None:
        return list(tok(request.prompt, add_special_tokens=True)["input_ids"])
    messages, kwargs = conversation(tok, request)
    try:
        ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=not request.continue_final,
                                      continue_final_message=request.continue_final, **kwargs)
    except InvalidRequest:
        raise
    except Exception as exc:  # jinja TemplateError and friends
        raise InvalidRequest(f"The model's chat template rejected these messages: {exc}") from exc
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)
