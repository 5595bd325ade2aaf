"""Anthropic Messages bodies -> ChatRequests for the shared ChatService (``chat_request``: the same
checks as every entry point). Only translation:

- ``system`` (a string or text blocks) becomes the system message;
- a user turn's ``tool_result`` blocks become tool messages (answering the ``tool_use`` of that id),
  its text blocks one user message; an assistant turn's text, ``tool_use`` blocks (its calls) and
  ``thinking`` blocks (its reasoning) one assistant message; a conversation ending on an assistant
  turn is continued (Anthropic's prefill);
- ``tools`` (``input_schema``) become the function tools the chat template renders; ``tool_choice``
  ``any`` or ``tool`` constrains the reply to one call (of any tool, or of the named one), ``none``
  leaves the tools out;
- ``output_config.format`` (a JSON schema) constrains the text of the reply;
- ``max_tokens``, ``temperature``, ``top_p``, ``top_k`` and ``stop_sequences`` become the samplers
  and stop strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from backends.base import MAX_NEW_TOKENS_LIMIT, ChatRequest, Constraint, ImageInput, Message, SamplingParams
from backends.errors import InvalidRequest
from serving.anthropic.schema import (
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UnsupportedBlock,
)
from serving.images import check_count, decode_base64, image_from_url
from serving.requests import RequestLimits, chat_request
from serving.tool_calls import output_constraint


@dataclass(frozen=True)
class ToolPlan:
    """The tools offered (their names; empty: tools off), whether the reply must be a call, and
    whether more than one call may be returned."""

    names: tuple[str, ...] = ()
    forced: bool = False
    parallel: bool = True


def _system(body: CountTokensRequest) -> list[Message]:
    if body.system is None:
        return []
    text = body.system if isinstance(body.system, str) else "\n\n".join(b.text for b in body.system)
    return [Message("system", text)] if text else []


def _picture(block: ImageBlock, where: str, limits: RequestLimits | None) -> ImageInput:
    image_limits = (limits or RequestLimits()).images
    src = block.source
    if src.type == "url":
        return image_from_url(src.url or "", f"{where}.source.url", image_limits, "messages")
    return decode_base64(src.data or "", f"{where}.source.data", image_limits, "messages")


def _turn(i: int, role: str, content: Any, call_names: dict[str, str],
          limits: RequestLimits | None = None) -> list[Message]:
    """One Anthropic message as the chat messages it stands for."""
    if isinstance(content, str):
        return [Message(role, content)]
    pictures: list[ImageInput] = []
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict] = []
    results: list[Message] = []
    for k, block in enumerate(content):
        where = f"messages[{i}].content[{k}]"
        if isinstance(block, UnsupportedBlock):
            raise InvalidRequest(f"{where}: {block.type} blocks are not supported by this server (text, image, "
                                 "tool_use, tool_result and thinking are).", "messages")
        if isinstance(block, ImageBlock):
            if role != "user":
                raise InvalidRequest(f"{where}: an image block belongs to a user turn.", "messages")
            pictures.append(_picture(block, where, limits))
        elif isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            if role != "assistant":
                raise InvalidRequest(f"{where}: a {block.type} block belongs to an assistant turn.", "messages")
            if isinstance(block, ThinkingBlock):
                thoughts.append(block.thinking)
        elif isinstance(block, ToolUseBlock):
            if role != "assistant":
                raise InvalidRequest(f"{where}: a tool_use block belongs to an assistant turn.", "messages")
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False)}})
            call_names[block.id] = block.name
        elif isinstance(block, ToolResultBlock):
            if role != "user":
                raise InvalidRequest(f"{where}: a tool_result block belongs to a user turn.", "messages")
            text = block.text()
            results.append(Message("tool", f"Error: {text}" if block.is_error else text,
                                   tool_call_id=block.tool_use_id, name=call_names.get(block.tool_use_id)))
    if role == "assistant":
        return [Message("assistant", "".join(texts), tool_calls=tuple(calls), reasoning="".join(thoughts) or None)]
    return results + ([Message("user", "\n\n".join(texts), images=tuple(pictures))]
                      if texts or pictures or not results else [])


def messages_of(body: CountTokensRequest, limits: RequestLimits | None = None) -> list[Message]:
    out = _system(body)
    call_names: dict[str, str] = {}  # tool_use id -> tool name, for the results that answer it
    check_count(sum(isinstance(b, ImageBlock) for m in body.messages if not isinstance(m.content, str)
                    for b in m.content), (limits or RequestLimits()).images)  # before any is decoded
    for i, m in enumerate(body.messages):
        out += _turn(i, m.role, m.content, call_names, limits)
    return out


def tools_of(body: CountTokensRequest) -> tuple[tuple[dict, ...], ToolPlan, str | None]:
    """The function tools for the template, the plan, and the one tool a choice of type 'tool' names."""
    choice = body.tool_choice
    if not body.tools or (choice is not None and choice.type == "none"):
        return (), ToolPlan(), None
    tools = tuple({"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                    "parameters": t.input_schema}} for t in body.tools)
    names = tuple(t.name for t in body.tools)
    forced = choice is not None and choice.type in ("any", "tool")
    only = None
    if choice is not None and choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice: a tool choice of type 'tool' needs the tool's name.", "tool_choice")
        if choice.name not in names:
            raise InvalidRequest(f"tool_choice: there is no tool named {choice.name!r} in tools.", "tool_choice")
        only = choice.name
    parallel = not (choice is not None and choice.disable_parallel_tool_use)
    return tools, ToolPlan(names, forced, parallel), only


def to_chat_request(body: CountTokensRequest, limits: RequestLimits | None = None,
                    max_tokens: int | None = None) -> tuple[ChatRequest, ToolPlan]:
    """``body`` as the ChatRequest to run (``max_tokens`` for a count, which has none) and its tool plan."""
    messages = messages_of(body, limits)
    if not any(m.role in ("user", "tool") for m in messages):
        raise InvalidRequest("messages: the conversation needs a user message.", "messages")
    continue_final = messages[-1].role == "assistant"
    tools, plan, only = tools_of(body)
    fmt = body.output_config.format if body.output_config else None
    # a forced call is constrained to the call, the format applies to text replies; on auto: either
    constraint = output_constraint(tools, plan.forced, only, fmt and Constraint(
        "json_schema", json.dumps(fmt.schema_), param="output_config"))
    features: dict[str, Any] = {"tools": tools, "constraint": constraint, "continue_final": continue_final}
    if body.thinking is not None and body.thinking.type in ("enabled", "disabled"):
        features["template_kwargs"] = (("enable_thinking", body.thinking.type == "enabled"),)
    if isinstance(body, MessagesRequest):
        # an upper bound: clients send their largest (32000, 64000); the engine stops at the context's end anyway
        params = SamplingParams(max_new_tokens=min(body.max_tokens, MAX_NEW_TOKENS_LIMIT),
                                temperature=1.0 if body.temperature is None else body.temperature,
                                top_p=1.0 if body.top_p is None else body.top_p,
                                top_k=0 if body.top_k is None else body.top_k, repetition_penalty=1.0)
        stop = tuple(body.stop_sequences or ())
    else:
        params, stop = SamplingParams(max_new_tokens=max_tokens or 1), ()
    return chat_request(messages, params, stop, limits, **features), plan
