"""Ollama bodies -> ChatRequests for the shared ChatService (``chat_request`` / ``completion_request``:
the same checks as every entry point). Only translation:

- ``options`` become the samplers, with Ollama's defaults where unset (temperature 0.8, top_k 40,
  top_p 0.9, repeat_penalty 1.1); ``num_predict`` -1 or -2 (no limit, fill the context) runs to the
  end of the context; ``num_ctx`` does not resize the loaded model's context (ignored, as options
  that do not apply are);
- ``format`` ``"json"`` constrains the reply to a JSON object, a JSON schema to that schema;
- chat ``messages`` (their ``tool_calls`` with decoded arguments, tool results by ``tool_name``) and
  ``tools`` (OpenAI's function shape) become the chat messages and tools; a conversation ending on
  an assistant message is continued;
- ``generate``'s ``system`` and ``prompt`` become a chat turn (the model's template applied), or
  with ``raw`` the prompt is continued as is.
"""

from __future__ import annotations

import json
import re
from typing import Any

from backends.base import MAX_NEW_TOKENS_LIMIT, ChatRequest, Constraint, Message, SamplingParams
from backends.errors import InvalidRequest
from serving.ollama.schema import EXTRA_OPTIONS, ChatBody, Format, GenerateBody, MessageIn, Options
from serving.images import check_count, decode_base64
from serving.requests import RequestLimits, chat_request, completion_request
from serving.tool_calls import output_constraint

DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "repeat_penalty": 1.1}  # Ollama's


def sampling(options: Options | None, context_length: int) -> tuple[SamplingParams, tuple[str, ...]]:
    """``options`` as SamplingParams and stop strings."""
    o = options or Options()

    def pick(name: str) -> Any:
        value = getattr(o, name)
        return DEFAULTS[name] if value is None else value

    n = o.num_predict
    max_tokens = n if n is not None and n > 0 else max(1, context_length)  # -1 / -2: to the context's end
    extra = {name: getattr(o, name) for name in EXTRA_OPTIONS if getattr(o, name) is not None}
    params = SamplingParams(max_new_tokens=min(max_tokens, MAX_NEW_TOKENS_LIMIT), temperature=pick("temperature"),
                            top_p=pick("top_p"), top_k=pick("top_k"), repetition_penalty=pick("repeat_penalty"),
                            seed=o.seed, **extra)
    stop = (o.stop,) if isinstance(o.stop, str) else tuple(o.stop or ())
    return params, stop


def constraint_of(fmt: Format) -> Constraint | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return Constraint("json_object", param="format")
    return Constraint("json_schema", json.dumps(fmt), param="format")


def _images(images: list[str] | None, where: str, limits: RequestLimits | None) -> tuple:
    """Ollama's ``images``: base64 pictures (no data: prefix), decoded and checked (``serving.images``)."""
    if not images:
        return ()
    image_limits = (limits or RequestLimits()).images
    check_count(len(images), image_limits)  # before any is decoded
    field = "images" if where == "images" else "messages"
    return tuple(decode_base64(b64, f"{where}[{k}]", image_limits, field) for k, b64 in enumerate(images))


def messages_of(messages: list[MessageIn], limits: RequestLimits | None = None) -> list[Message]:
    """Ollama messages as chat messages. Ollama's tool calls carry no ids: each call gets one, and a
    tool result answers the earliest unanswered call of its ``tool_name`` (or the earliest one)."""
    out: list[Message] = []
    pending: list[tuple[str, str]] = []  # (call id, function name) not answered yet
    check_count(sum(len(m.images or ()) for m in messages), (limits or RequestLimits()).images)
    for i, m in enumerate(messages):
        if m.images and m.role != "user":
            raise InvalidRequest(f"messages[{i}].images: only a user message can carry images.", "messages")
        if m.role == "assistant":
            calls = tuple({"id": f"call_{i}_{k}", "type": "function",
                           "function": {"name": c.function.name,
                                        "arguments": json.dumps(c.function.arguments, ensure_ascii=False)}}
                          for k, c in enumerate(m.tool_calls or ()))
            pending += [(c["id"], c["function"]["name"]) for c in calls]
            out.append(Message("assistant", m.content, tool_calls=calls, reasoning=m.thinking or None))
        elif m.role == "tool":
            name = m.tool_name or m.name
            match = next((p for p in pending if p[1] == name), pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
            call_id = match[0] if match else f"call_{i}"
            out.append(Message("tool", m.content, tool_call_id=call_id, name=name or (match[1] if match else None)))
        else:
            out.append(Message(m.role, m.content, images=_images(m.images, f"messages[{i}].images", limits)))
    return out


def _features(body: ChatBody | GenerateBody) -> dict[str, Any]:
    features: dict[str, Any] = {"constraint": constraint_of(body.format)}
    if isinstance(body.think, bool):
        features["template_kwargs"] = (("enable_thinking", body.think),)
    return features


def chat_to_request(body: ChatBody, context_length: int, limits: RequestLimits | None = None) -> ChatRequest:
    if not body.messages:
        raise InvalidRequest("messages: give at least one message.", "messages")
    messages = messages_of(body.messages, limits)
    params, stop = sampling(body.options, context_length)
    features = _features(body)
    features["continue_final"] = messages[-1].role == "assistant"
    if body.tools:  # Ollama has no tool_choice: auto, so with a format the grammar allows a call or the format
        features["tools"] = tuple(t.model_dump(exclude_none=True) for t in body.tools)
        features["constraint"] = output_constraint(features["tools"], False, None, features["constraint"])
    return chat_request(messages, params, stop, limits, **features)


def generate_to_request(body: GenerateBody, context_length: int, limits: RequestLimits | None = None) -> ChatRequest:
    images = _images(body.images, "images", limits)
    if body.suffix:
        raise InvalidRequest("suffix: fill-in-the-middle is not supported by this server.", "suffix")
    params, stop = sampling(body.options, context_length)
    features = _features(body)
    if body.raw:
        if images:
            raise InvalidRequest("images: a raw prompt (raw: true) has no place for pictures; leave raw off.", "images")
        features.pop("template_kwargs", None)
        return completion_request(body.prompt, params, stop, limits, **features)
    system = [Message("system", body.system)] if body.system else []
    return chat_request([*system, Message("user", body.prompt, images=images)], params, stop, limits, **features)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_s(value: float | str | None) -> float | None:
    """Ollama's ``keep_alive`` in seconds: a number of seconds or a duration ("5m", "1h30m", "10s");
    negative = for ever (``inf``), 0 = unload when the request ends; None when the request leaves it
    out. Anything else is refused, naming the field."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise InvalidRequest(f"keep_alive: {_short(text)!r} is not a duration: write seconds (300) or a "
                                     "duration such as \"5m\", \"1h\", \"10s\" (0 = unload now, negative = keep "
                                     "loaded).", "keep_alive") from None
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    if seconds != seconds:  # NaN
        raise InvalidRequest("keep_alive: not a number.", "keep_alive")
    return float("inf") if seconds < 0 else seconds


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."

