"""The one place user input becomes a ChatRequest (and a load's options become ModelSpec fields):
text made valid, numbers coerced, the size limits, the stop strings, the chat template's thinking
switch. Every entry point (the UI, Gradio's /chat and /complete, /v1, the lab's Compare) comes
through here, so each refuses the same things the same way, with an InvalidRequest naming the
parameter. The options themselves (names, types, bounds, order) are declared in
``backends/options.py``; the bounds are checked where SamplingParams is made.

Nothing here imports gradio, torch or llama_cpp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from backends.base import ChatRequest, Message, SamplingParams
from backends.errors import InvalidRequest
from backends.options import BY_NAME, LOADER_BY_NAME, SAMPLING, Option, gradio_options
from serving.attachments import Attachment, split, with_context
from serving.images import ImageLimits, check_count

MAX_MESSAGE_CHARS = 200_000  # the default of --max-prompt-chars
MAX_EMBED_TOKENS = 8192  # the default of --max-embed-tokens (16 inputs of llama-server's 512-token batch)
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 200
THINKING_CHOICES = BY_NAME["enable_thinking"].choices
# /chat's parameters after (message, history, system_prompt), in their API order
CHAT_OPTIONS: tuple[Option, ...] = gradio_options(SAMPLING)
# /complete's parameters after the prompt: the core samplers, the stop strings, then the other samplers
# (added after the stop strings, so positional calls from before them keep working)
COMPLETE_OPTIONS: tuple[Option, ...] = (*(o for o in CHAT_OPTIONS if o.core or o.name == "stop"),
                                        *(o for o in CHAT_OPTIONS if o.kind == "sampler" and not o.core))


@dataclass(frozen=True)
class RequestLimits:
    """The size limits every entry point applies (the UI, Gradio's /chat, /v1, the lab's Compare):
    ``max_prompt_chars`` over the whole conversation, checked before anything is tokenized;
    ``max_prompt_tokens`` (0 = the model's context) checked by the backend before generating;
    ``max_embed_tokens``: the tokens one embeddings request may ask for, over all its inputs."""

    max_prompt_chars: int = MAX_MESSAGE_CHARS
    max_prompt_tokens: int = 0
    max_embed_tokens: int = MAX_EMBED_TOKENS
    images: ImageLimits = ImageLimits()  # pictures: bytes, pixels and count (``serving.images``)


def check_chars(chars: int, what: str, param: str, limits: RequestLimits | None = None) -> None:
    """InvalidRequest naming ``param`` when ``chars`` characters of ``what`` ("The conversation",
    "input", ...) exceed --max-prompt-chars: the one check of that limit, on every entry point."""
    most = (limits or RequestLimits()).max_prompt_chars
    if chars > most:
        raise InvalidRequest(f"{what} is {chars:,} characters long; this server accepts at most {most:,} "
                             "(--max-prompt-chars).", param)


def clean_text(text: str, name: str) -> str:
    """``text`` unchanged if it is valid Unicode (encodable as UTF-8), else InvalidRequest naming
    ``name``: a lone UTF-16 surrogate (JSON allows "\\ud800") cannot reach a tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"{name} contains an invalid character at position {exc.start} (a lone UTF-16 "
                             "surrogate): send valid Unicode text.", name) from None
    return text


def as_text(v: Any, name: str, max_chars: int = 4096) -> str:
    """A short text parameter (a model path, a backend, an id): a string (None = ""), valid Unicode,
    at most ``max_chars``; else InvalidRequest naming ``name``."""
    if v is None:
        return ""
    if not isinstance(v, str):
        raise InvalidRequest(f"{name} must be a string, got {type(v).__name__}.", name)
    if len(v) > max_chars:
        raise InvalidRequest(f"{name} is {len(v):,} characters long; at most {max_chars:,}.", name)
    return clean_text(v, name)


def as_number(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise InvalidRequest(f"{name} must be a number, got {_shown(v)}.", name)
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest(f"{name} must be a number, got {_shown(v)}.", name) from None
    if f != f or f in (float("inf"), float("-inf")):
        raise InvalidRequest(f"{name} must be a finite number.", name)
    return f


def as_int(v: Any, name: str) -> int:
    f = as_number(v, name)
    if f != int(f):
        raise InvalidRequest(f"{name} must be a whole number, got {_shown(v)}.", name)
    return int(f)


def _shown(v: Any) -> str:
    """A value quoted in an error message: its repr, shortened (and safe to encode)."""
    text = repr(v)
    text = text if len(text) <= 60 else text[:57] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def text_of(content: Any) -> str:
    """Message content as plain text: Gradio 6 sends a list of {"type": "text", "text": ...} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(text_of(part) for part in content if not isinstance(part, dict) or part.get("type", "text") == "text")
    return str(content)


def attachments_of(content: Any) -> list[Attachment]:
    """The files of a history message: its ``{"type": "attachment", "attachment": Attachment}`` parts."""
    if not isinstance(content, (list, tuple)):
        return []
    return [p["attachment"] for p in content if isinstance(p, dict) and p.get("type") == "attachment"
            and isinstance(p.get("attachment"), Attachment)]


def normalize_history(history: Any, limits: RequestLimits | None = None) -> list[Message]:
    """Chatbot/OpenAI-style history -> Messages. Tolerates None, [] and tuple pairs. A user message's
    attachment parts become its pictures and file context (``serving.attachments``)."""
    if not history:
        return []
    if not isinstance(history, (list, tuple)):
        raise InvalidRequest("history must be a list of {role, content} messages.", "history")
    out: list[Message] = []
    for item in history:
        if isinstance(item, dict):
            metadata = item.get("metadata")
            if isinstance(metadata, dict) and metadata.get("title"):
                continue  # UI annotations (the stats line under a reply) are not conversation
            role = item.get("role")
            if not isinstance(role, str) or role not in ("user", "assistant", "system"):
                raise InvalidRequest(f"Unknown role {_shown(role)} in history: use user, assistant or system.",
                                     "history")
            text = text_of(item.get("content"))
            files = attachments_of(item.get("content")) if role == "user" else []
            if files:  # a past message's files (the UI hands them over read: ``ui/attachments.py``)
                blocks, images = split(files, limits.images if limits else None)
                out.append(Message(role, with_context(text, blocks), images=images))
            elif text or role == "user":
                out.append(Message(role, text))
        elif isinstance(item, (list, tuple)) and len(item) == 2:  # [user, assistant] pairs
            if item[0]:
                out.append(Message("user", text_of(item[0])))
            if item[1]:
                out.append(Message("assistant", text_of(item[1])))
        else:
            raise InvalidRequest("history must be a list of {role, content} messages.", "history")
    return out


def stop_strings(stop: Any) -> tuple[str, ...]:
    """Stop strings from a string (one per line), a list, or nothing."""
    if stop is None or stop == "":
        return ()
    if isinstance(stop, str):
        items = stop.splitlines()
    elif isinstance(stop, (list, tuple)):
        items = list(stop)
    else:
        raise InvalidRequest("stop must be a string or a list of strings.", "stop")
    if not all(isinstance(s, str) for s in items):
        raise InvalidRequest("stop must be a string or a list of strings.", "stop")
    out = tuple(clean_text(s, "stop") for s in items if s)
    if len(out) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"At most {MAX_STOP_STRINGS} stop strings.", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in out):
        raise InvalidRequest(f"A stop string may be at most {MAX_STOP_CHARS} characters.", "stop")
    return out


def thinking_kwargs(enable_thinking: Any) -> tuple[tuple[str, Any], ...]:
    """The chat template's ``enable_thinking`` from the UI's choice: None/"auto" leaves the template's
    own default (nothing passed); "on"/"off" (or a bool) sets it."""
    if enable_thinking is None or enable_thinking == "" or enable_thinking == "auto":
        return ()
    if isinstance(enable_thinking, bool):
        return (("enable_thinking", enable_thinking),)
    if isinstance(enable_thinking, str) and enable_thinking.strip().lower() in ("on", "true", "off", "false"):
        return (("enable_thinking", enable_thinking.strip().lower() in ("on", "true")),)
    raise InvalidRequest(f"enable_thinking must be one of {', '.join(THINKING_CHOICES)}, got {_shown(enable_thinking)}.",
                         "enable_thinking")


def option_value(option: Option, value: Any) -> Any:
    """A user's ``value`` for ``option`` as its declared type (numbers may come as strings, as Gradio
    sends them); None when it is left out (None or ""), which keeps the default. A core sampler cannot
    be left out that way (its None is refused as not a number); its bounds are checked later, once,
    where SamplingParams is made."""
    if option.parse is not None:
        return option.parse(value)
    if (value is None or (isinstance(value, str) and not value.strip())) and (option.optional or not option.core):
        return None
    if option.type is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(f"{option.name} must be true or false, got {_shown(value)}.", option.name)
        return value
    if option.type is int:
        return as_int(value, option.name)
    if option.type is float:
        return as_number(value, option.name)
    return as_text(value, option.name).strip()


def sampling_params(**values: Any) -> SamplingParams:
    """SamplingParams from Gradio-style inputs by name (numbers as floats or strings), each coerced
    by its declaration; one left out, None or "" keeps its default."""
    unknown = sorted(name for name in values if name not in BY_NAME or BY_NAME[name].kind != "sampler")
    if unknown:
        raise InvalidRequest(f"Unknown sampler {unknown[0]!r}.", unknown[0])
    coerced = {name: option_value(BY_NAME[name], value) for name, value in values.items()}
    return SamplingParams(**{name: v for name, v in coerced.items() if v is not None})


def call_values(options: Sequence[Option], values: Sequence[Any], named: dict[str, Any]) -> dict[str, Any]:
    """An endpoint's declared parameters, given positionally (in ``options``' order) and by name, as
    {name: value}; a name twice or not among them is refused."""
    if len(values) > len(options):
        raise InvalidRequest(f"At most {len(options)} parameters follow; got {len(values)}.")
    out = dict(zip((o.name for o in options), values))
    for name, value in named.items():
        if name in out or name not in {o.name for o in options}:
            raise InvalidRequest(f"Unexpected parameter {name!r}.", name)
        out[name] = value
    return out


def chat_request(messages: Sequence[Message], params: SamplingParams, stop: Any = (),
                 limits: RequestLimits | None = None, **features: Any) -> ChatRequest:
    """The one place a ChatRequest is made from user input (``build_request`` for Gradio-style
    inputs, the /v1 translation for OpenAI bodies): valid text, the size limits and the stop
    strings (``params`` were checked when they were made), so every entry point refuses the same
    things the same way. ``features``: the ChatRequest's other fields (tools, constraint, logprobs,
    continue_final, template_kwargs)."""
    limits = limits or RequestLimits()
    total = 0
    for i, m in enumerate(messages):
        clean_text(m.content, "message" if i == len(messages) - 1 else f"messages[{i}].content")
        total += len(m.content) + sum(len(str(c)) for c in m.tool_calls)
    check_chars(total, "The conversation", "messages", limits)
    check_count(sum(len(m.images) for m in messages), limits.images)
    return ChatRequest(tuple(messages), params, stop_strings(stop), limits.max_prompt_tokens, **features)


def completion_request(prompt: Any, params: SamplingParams, stop: Any = (), limits: RequestLimits | None = None,
                       **features: Any) -> ChatRequest:
    """A raw continuation of ``prompt`` (the Notebook, Gradio's /complete, /v1/completions): no chat
    template, the same text, size and stop checks as ``chat_request``. ``features``: e.g.
    ``constraint``, ``logprobs``."""
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InvalidRequest(f"prompt must be a string, got {type(prompt).__name__}.", "prompt")
    clean_text(prompt, "prompt")
    if not prompt:
        raise InvalidRequest("The prompt is empty: type something to continue.", "prompt")
    check_chars(len(prompt), "The prompt", "prompt", limits)
    limits = limits or RequestLimits()
    return ChatRequest((), params, stop_strings(stop), limits.max_prompt_tokens, prompt=prompt, **features)


def build_request(message: str, history: Any, system_prompt: str, max_new_tokens: float, temperature: float,
                  top_p: float, top_k: float, repetition_penalty: float, seed: float | None,
                  stop: Any = (), limits: RequestLimits | None = None, enable_thinking: Any = None,
                  files: Sequence[Attachment] = (), **samplers: Any) -> ChatRequest:
    """A chat ChatRequest from /chat's inputs; ``samplers``: the other declared samplers by name;
    ``files``: the message's attachments, already read (pictures and text files)."""
    message = text_of(message)
    files = list(files or ())
    if not message.strip() and not files:
        raise InvalidRequest("The message is empty: type something to send.", "message")
    check_chars(len(message), "The message", "message", limits)  # before the history is even looked at
    blocks, images = split(files, (limits or RequestLimits()).images) if files else ("", ())
    message = with_context(message, blocks)
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise InvalidRequest("system_prompt must be a string.", "system_prompt")
    messages = []
    if system_prompt and system_prompt.strip():
        messages.append(Message("system", clean_text(system_prompt, "system_prompt").strip()))
    messages += [m for m in normalize_history(history, limits) if m.role != "system" or not messages]
    messages.append(Message("user", message, images=images))
    params = sampling_params(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                             repetition_penalty=repetition_penalty, seed=seed, **samplers)
    request = chat_request(messages, params, stop, limits)
    kwargs = thinking_kwargs(enable_thinking)
    return replace(request, template_kwargs=kwargs) if kwargs else request


def chat_call(message: Any, history: Any, system_prompt: Any, values: Sequence[Any], named: dict[str, Any],
              limits: RequestLimits | None = None, files: Sequence[Attachment] = ()) -> ChatRequest:
    """A ChatRequest from a /chat call: (message, history, system_prompt), then ``CHAT_OPTIONS``
    positionally (``values``, in the API's order) or by name (``named``); one left out keeps its
    default. ``files``: the message's attachments, already read."""
    given = call_values(CHAT_OPTIONS, values, named)
    core = {o.name: given.pop(o.name, o.default) for o in CHAT_OPTIONS if o.core}
    stop, thinking = given.pop("stop", ()), given.pop("enable_thinking", None)
    return build_request(message, history, system_prompt, **core, stop=stop, limits=limits,
                         enable_thinking=thinking, files=files, **given)


def completion_call(prompt: Any, values: Sequence[Any], named: dict[str, Any],
                    limits: RequestLimits | None = None) -> ChatRequest:
    """A raw-continuation ChatRequest from a /complete call: the prompt, then ``COMPLETE_OPTIONS``
    positionally or by name."""
    given = call_values(COMPLETE_OPTIONS, values, named)
    stop = given.pop("stop", ())
    params = sampling_params(**{o.name: given.get(o.name, o.default) for o in COMPLETE_OPTIONS if o.kind == "sampler"})
    return completion_request(prompt, params, stop, limits)


def loader_options(**options: Any) -> dict[str, Any]:
    """Load options from the UI or the API, checked by name: text ones stripped ("" or None = the
    server's default, left out), numbers whole and in range, flags booleans (``backends.options.LOADER``
    declares each; api_base, api_key and gguf_file are text)."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if name in ("api_base", "api_key", "gguf_file"):
            out[name] = as_text(value, name).strip()
            continue
        option = LOADER_BY_NAME.get(name)
        if option is None:
            raise InvalidRequest(f"Unknown load option {name!r}.", name)
        v = option_value(option, value)
        if isinstance(v, str) and not option.free:
            v = v.lower()
        why = option.out_of_bounds(v) if option.parse is None else None
        if why:
            raise InvalidRequest(why, name)
        if v is not None:
            out[name] = v
    return out
