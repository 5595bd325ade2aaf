"""OpenAI bodies -> ChatRequests for the shared ChatService (``chat_request`` / ``completion_request``:
the same checks as every entry point). Only translation: what the engine cannot honour it refuses by
name (``Backend.check_request``); what no engine here can honour is refused by the schema's
``unsupported()``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from backends.base import ChatRequest, Constraint, Message, SamplingParams
from backends.errors import InvalidRequest
from serving.openai.schema import (
    EXTENSION_SAMPLERS,
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    ResponseFormat,
    SamplerFields,
)
from serving.images import check_count, image_from_url
from serving.request_json import check_body
from serving.requests import RequestLimits, chat_request, completion_request
from serving.tool_calls import output_constraint

DEFAULT_MAX_TOKENS = 1024  # chat
DEFAULT_COMPLETION_TOKENS = 16  # /v1/completions, as OpenAI


@dataclass(frozen=True)
class ToolPlan:
    """How a chat request's tools are handled: ``names`` offered (empty: tools off), ``forced``
    (tool_choice required or named: the output is constrained to one call), ``parallel`` (more than
    one call may be returned)."""

    names: tuple[str, ...] = ()
    forced: bool = False
    parallel: bool = True
    tools: tuple[Any, ...] = field(default=(), repr=False)


def refuse_unsupported(body: Any) -> None:
    refused = body.unsupported()
    if refused is not None:
        name, why = refused
        raise InvalidRequest(f"{name}: {why}.", name)


def sampling_params(body: SamplerFields, max_tokens: int) -> SamplingParams:
    extra = {o.name: getattr(body, o.name) for o in EXTENSION_SAMPLERS if getattr(body, o.name) is not None}
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=0 if body.top_k is None else body.top_k,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        seed=body.seed,
        **extra,
    )


def constraint_of(fmt: ResponseFormat | None) -> Constraint | None:
    """response_format -> the Constraint the engine enforces (None for text)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        if fmt.schema_:  # llama-server's {"type": "json_object", "schema": {...}}
            return Constraint("json_schema", json.dumps(fmt.schema_))
        return Constraint("json_object")
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise InvalidRequest("response_format: a json_schema response format needs json_schema.schema.",
                             "response_format")
    return Constraint("json_schema", json.dumps(fmt.json_schema.schema_))


def _images(m, i: int, limits: RequestLimits | None) -> tuple:
    """The pictures of message ``i`` (its ``image_url`` parts), decoded and checked (``serving.images``)."""
    image_limits = (limits or RequestLimits()).images
    return tuple(image_from_url(url, f"messages[{i}].content[{k}].image_url", image_limits, "messages")
                 for k, url in m.image_urls())


def _messages(body: ChatCompletionRequest, limits: RequestLimits | None = None) -> list[Message]:
    out: list[Message] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, for tool results that omit it
    check_count(sum(len(m.image_urls()) for m in body.messages), (limits or RequestLimits()).images)  # before decoding
    for i, m in enumerate(body.messages):
        try:
            text = m.text()
        except ValueError as exc:
            raise InvalidRequest(str(exc), "messages") from exc
        role = "system" if m.role == "developer" else m.role
        if role == "assistant":
            calls = tuple({"id": c.id or f"call_{i}_{k}", "type": "function",
                           "function": {"name": c.function.name, "arguments": c.function.arguments}}
                          for k, c in enumerate(m.tool_calls or ()))
            for k, c in enumerate(calls):
                try:
                    arguments = json.loads(c["function"]["arguments"])
                except (ValueError, RecursionError):
                    raise InvalidRequest(f"messages[{i}].tool_calls: the arguments of {c['function']['name']!r} "
                                         "are not valid JSON.", "messages") from None
                # decoded, they reach the chat template: the same checks as the body itself
                check_body(arguments, at=("messages", i, "tool_calls", k, "function", "arguments"))
                call_names[c["id"]] = c["function"]["name"]
            out.append(Message("assistant", text, tool_calls=calls, reasoning=m.reasoning_content))
        elif role == "tool":
            if not m.tool_call_id:
                raise InvalidRequest(f"messages[{i}]: a tool message needs tool_call_id.", "messages")
            out.append(Message("tool", text, tool_call_id=m.tool_call_id,
                               name=m.name or call_names.get(m.tool_call_id)))
        else:
            out.append(Message(role, text, images=_images(m, i, limits)))
    return out


def to_chat_request(body: ChatCompletionRequest, limits: RequestLimits | None = None) -> tuple[ChatRequest, ToolPlan]:
    refuse_unsupported(body)
    messages = _messages(body, limits)
    continue_final = messages[-1].role == "assistant"
    if continue_final and not any(m.role in ("user", "tool") and m.content.strip() for m in messages):
        raise InvalidRequest("The last message is the assistant's and there is no user message before it: "
                             "send a user message.", "messages")
    plan = ToolPlan()
    tools: tuple[Any, ...] = ()
    forced, only = False, None
    if body.tools and body.tool_choice != "none":
        tools = tuple(t.model_dump(exclude_none=True) for t in body.tools)
        forced = body.tool_choice == "required" or isinstance(body.tool_choice, NamedToolChoice)
        only = body.tool_choice.function.name if isinstance(body.tool_choice, NamedToolChoice) else None
        plan = ToolPlan(tuple(t["function"]["name"] for t in tools), forced, body.parallel_tool_calls is not False,
                        tools)
    constraint = output_constraint(tools, forced, only, constraint_of(body.response_format))
    features: dict[str, Any] = {"tools": tools, "constraint": constraint, "continue_final": continue_final}
    if body.logprobs:
        features["logprobs"] = body.top_logprobs or 0
    if body.chat_template_kwargs:
        features["template_kwargs"] = tuple(sorted(body.chat_template_kwargs.items()))
    params = sampling_params(body, body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS)
    return chat_request(messages, params, body.stop_list(), limits, **features), plan


def choices_of(request: ChatRequest, n: int) -> list[ChatRequest]:
    """``n`` copies of ``request``, one per choice; with a seed, choice i samples with seed + i (the
    same seed in every slot would give n identical samples)."""
    seed = request.params.seed
    if seed is None:
        return [request] * n
    return [replace(request, params=replace(request.params, seed=(seed + i) % 2**32)) for i in range(n)]


def to_completion_requests(body: CompletionRequest, limits: RequestLimits | None = None) -> list[ChatRequest]:
    """One request per choice: each prompt, ``n`` times (choice index = prompt * n + k, as OpenAI)."""
    refuse_unsupported(body)
    prompts = body.prompts()
    if not prompts:
        raise InvalidRequest("prompt: give a prompt string or a non-empty list of them.", "prompt")
    params = sampling_params(body, body.max_tokens or DEFAULT_COMPLETION_TOKENS)
    features: dict[str, Any] = {"constraint": constraint_of(body.response_format)}
    if body.logprobs is not None:
        features["logprobs"] = body.logprobs
    out = []
    for i, prompt in enumerate(prompts):
        try:
            request = completion_request(prompt, params, body.stop_list(), limits, **features)
        except InvalidRequest as exc:
            if len(prompts) > 1:
                raise InvalidRequest(f"prompt[{i}]: {exc}", "prompt") from None
            raise
        out += choices_of(request, body.n)
    return out
