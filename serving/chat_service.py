"""The one chat service every transport uses: the UI, Gradio's /chat and /v1 only translate to and
from it. It builds and validates the request, applies the per-client limits, and opens the
generation on the ModelManager (which takes the model slot, applies stop strings, and times and
records it); closing the stream cancels the generation and frees the client's slot.

It raises typed BackendErrors; each transport converts them at its one edge. Nothing here imports
gradio, torch or llama_cpp.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from backends.base import ChatRequest, Message, SamplingParams
from backends.errors import InvalidRequest, ServerShuttingDown
from backends.manager import Generation, ModelManager
from serving.ratelimit import RateLimiter

# A streamed reply is sent to the browser at most this often (each Gradio chunk carries the whole
# value, so one update per token costs O(n^2) bytes on long replies). The first token goes at once.
STREAM_INTERVAL_S = 0.04
MAX_MESSAGE_CHARS = 200_000  # the default of --max-prompt-chars
MAX_EMBED_TOKENS = 8192  # the default of --max-embed-tokens (16 inputs of llama-server's 512-token batch)
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 200


@dataclass(frozen=True)
class RequestLimits:
    """The size limits every entry point applies (the UI, Gradio's /chat, /v1, the lab's Compare):
    ``max_prompt_chars`` over the whole conversation, checked before anything is tokenized;
    ``max_prompt_tokens`` (0 = the model's context) checked by the backend before generating;
    ``max_embed_tokens``: the tokens one embeddings request may ask for, over all its inputs."""

    max_prompt_chars: int = MAX_MESSAGE_CHARS
    max_prompt_tokens: int = 0
    max_embed_tokens: int = MAX_EMBED_TOKENS


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


def chat_request(messages: Sequence[Message], params: SamplingParams, stop: Any = (),
                 limits: RequestLimits | None = None, **features: Any) -> ChatRequest:
    """The one place a ChatRequest is made from user input (``build_request`` for Gradio-style
    inputs, the /v1 translation for OpenAI bodies): valid text, the size limits, the sampling
    bounds and the stop strings, so every entry point refuses the same things the same way.
    ``features``: the ChatRequest's other fields (tools, constraint, logprobs, continue_final,
    template_kwargs)."""
    limits = limits or RequestLimits()
    total = 0
    for i, m in enumerate(messages):
        clean_text(m.content, "message" if i == len(messages) - 1 else f"messages[{i}].content")
        total += len(m.content) + sum(len(str(c)) for c in m.tool_calls)
    if total > limits.max_prompt_chars:
        raise InvalidRequest(f"The conversation is {total:,} characters long; this server accepts at most "
                             f"{limits.max_prompt_chars:,} (--max-prompt-chars).", "messages")
    return ChatRequest(tuple(messages), params.validated(), stop_strings(stop), limits.max_prompt_tokens, **features)


def completion_request(prompt: Any, params: SamplingParams, stop: Any = (), limits: RequestLimits | None = None,
                       **features: Any) -> ChatRequest:
    """A raw continuation of ``prompt`` (the Notebook, Gradio's /complete, /v1/completions): no chat
    template, the same text, size, sampling and stop checks as ``chat_request``. ``features``:
    e.g. ``constraint``, ``logprobs``."""
    limits = limits or RequestLimits()
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InvalidRequest(f"prompt must be a string, got {type(prompt).__name__}.", "prompt")
    clean_text(prompt, "prompt")
    if not prompt:
        raise InvalidRequest("The prompt is empty: type something to continue.", "prompt")
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidRequest(f"The prompt is {len(prompt):,} characters long; this server accepts at most "
                             f"{limits.max_prompt_chars:,} (--max-prompt-chars).", "prompt")
    return ChatRequest((), params.validated(), stop_strings(stop), limits.max_prompt_tokens, prompt=prompt, **features)


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


def normalize_history(history: Any) -> list[Message]:
    """Chatbot/OpenAI-style history -> Messages. Tolerates None, [] and tuple pairs."""
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
            if text or role == "user":
                out.append(Message(role, text))
        elif isinstance(item, (list, tuple)) and len(item) == 2:  # [user, assistant] pairs
            if item[0]:
                out.append(Message("user", text_of(item[0])))
            if item[1]:
                out.append(Message("assistant", text_of(item[1])))
        else:
            raise InvalidRequest("history must be a list of {role, content} messages.", "history")
    return out


# The /chat parameters after the first nine, in their API order (new ones go at the end), with the
# neutral value each defaults to: a call that leaves them out asks for nothing new.
EXTRA_CHAT_PARAMS: tuple[tuple[str, Any], ...] = (
    ("min_p", 0.0), ("typical_p", 1.0), ("presence_penalty", 0.0), ("frequency_penalty", 0.0),
    ("dry_multiplier", 0.0), ("xtc_probability", 0.0), ("xtc_threshold", 0.1), ("mirostat", 0),
    ("mirostat_tau", 5.0), ("mirostat_eta", 0.1), ("no_repeat_ngram_size", 0),
)
THINKING_CHOICES = ("auto", "on", "off")


def sampling_params(max_new_tokens: Any, temperature: Any, top_p: Any, top_k: Any, repetition_penalty: Any,
                    seed: Any, **extra: Any) -> SamplingParams:
    """SamplingParams from Gradio-style inputs (numbers as floats or strings), each checked by name;
    ``extra``: the EXTRA_CHAT_PARAMS samplers (None = neutral)."""
    neutral = dict(EXTRA_CHAT_PARAMS)
    unknown = set(extra) - set(neutral)
    if unknown:
        raise InvalidRequest(f"Unknown sampler {sorted(unknown)[0]!r}.", sorted(unknown)[0])
    samplers = {}
    for name, value in extra.items():
        if value is None or value == "":
            continue
        samplers[name] = as_int(value, name) if isinstance(neutral[name], int) else as_number(value, name)
    return SamplingParams(
        max_new_tokens=as_int(max_new_tokens, "max_new_tokens"),
        temperature=as_number(temperature, "temperature"),
        top_p=as_number(top_p, "top_p"),
        top_k=as_int(top_k, "top_k"),
        repetition_penalty=as_number(repetition_penalty, "repetition_penalty"),
        seed=None if seed is None or seed == "" else as_int(seed, "seed"),
        **samplers,
    )


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


def build_request(message: str, history: Any, system_prompt: str, max_new_tokens: float, temperature: float,
                  top_p: float, top_k: float, repetition_penalty: float, seed: float | None,
                  stop: Any = (), limits: RequestLimits | None = None, enable_thinking: Any = None,
                  **samplers: Any) -> ChatRequest:
    """A chat ChatRequest from /chat's inputs; ``samplers``: EXTRA_CHAT_PARAMS by name."""
    message = text_of(message)
    if not message.strip():
        raise InvalidRequest("The message is empty: type something to send.", "message")
    limits = limits or RequestLimits()
    if len(message) > limits.max_prompt_chars:  # before the history is even looked at
        raise InvalidRequest(f"The message is {len(message):,} characters long; this server accepts at most "
                             f"{limits.max_prompt_chars:,} (--max-prompt-chars).", "message")
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise InvalidRequest("system_prompt must be a string.", "system_prompt")
    messages = []
    if system_prompt and system_prompt.strip():
        messages.append(Message("system", clean_text(system_prompt, "system_prompt").strip()))
    messages += [m for m in normalize_history(history) if m.role != "system" or not messages]
    messages.append(Message("user", message))
    params = sampling_params(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, **samplers)
    request = chat_request(messages, params, stop, limits)
    kwargs = thinking_kwargs(enable_thinking)
    return replace(request, template_kwargs=kwargs) if kwargs else request


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


class ChatStream:
    """An open generation plus the client's rate-limit slot. Iterate it for TextDeltas; ``stats``
    is final once iteration ends. ``close()`` (or the end of the stream) cancels and frees both."""

    def __init__(self, generation: Generation, cancel: threading.Event, release: contextlib.ExitStack):
        self._generation = generation
        self.cancel = cancel
        self._release = release
        self.stats = generation.stats
        self.cut: str | None = None  # why the server ended it (``ChatService.cut_all``), if it did

    def __iter__(self):
        try:
            yield from self._generation
            if self.cut:  # the stream ended because the server cut it: say so, in band
                raise ServerShuttingDown(self.cut)
        finally:
            self.close()

    def close(self) -> None:
        self.cancel.set()  # the client went away or we are done: stop the model within a token
        self._generation.close()
        self._release.close()


class ChatService:
    def __init__(self, manager: ModelManager, limiter: RateLimiter | None = None,
                 stream_interval_s: float = STREAM_INTERVAL_S, limits: RequestLimits | None = None):
        self.manager = manager
        self.limiter = limiter or RateLimiter()
        self.stream_interval_s = stream_interval_s
        self.limits = limits or RequestLimits()
        self._open: set[ChatStream] = set()  # for the shutdown deadline (cut_all)
        self._open_lock = threading.Lock()

    def open(self, request: ChatRequest, *, endpoint: str, client: str | None = None,
             t0: float | None = None, model: str | None = None) -> ChatStream:
        """Start a generation for ``client`` (rate limits first) on the chat's model or the pool's
        ``model`` (which may load it: call from a worker thread then). Raises Busy / NoModelLoaded
        here, before anything streams, so each transport can answer with a plain error."""
        release = contextlib.ExitStack()
        release.enter_context(self.limiter.slot(client))
        cancel = threading.Event()
        try:
            generation = self.manager.stream(request, cancel, endpoint=endpoint, t0=t0, client=client, model=model)
        except BaseException:
            release.close()
            raise
        stream = ChatStream(generation, cancel, release)
        with self._open_lock:
            self._open.add(stream)
        release.callback(self._forget, stream)
        return stream

    def open_many(self, requests: Sequence[ChatRequest], *, endpoint: str, client: str | None = None,
                  t0: float | None = None, model: str | None = None) -> list[ChatStream]:
        """Several generations for one client request (/v1's ``n``, a list of prompts), run side by
        side in the model's batch slots under ONE rate-limit slot (freed when the last one ends).
        All open or none: a failure closes the ones already opened."""
        if len(requests) == 1:
            return [self.open(requests[0], endpoint=endpoint, client=client, t0=t0, model=model)]
        shared = contextlib.ExitStack()
        shared.enter_context(self.limiter.slot(client))
        left = [len(requests)]
        lock = threading.Lock()

        def one_done() -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                shared.close()

        streams: list[ChatStream] = []
        try:
            for request in requests:
                cancel = threading.Event()
                generation = self.manager.stream(request, cancel, endpoint=endpoint, t0=t0, client=client,
                                                 model=model)
                release = contextlib.ExitStack()
                release.callback(one_done)
                stream = ChatStream(generation, cancel, release)
                with self._open_lock:
                    self._open.add(stream)
                release.callback(self._forget, stream)
                streams.append(stream)
        except BaseException:
            for stream in streams:
                stream.close()
            for _ in range(len(requests) - len(streams)):
                one_done()
            raise
        return streams

    def _forget(self, stream: ChatStream) -> None:
        with self._open_lock:
            self._open.discard(stream)

    def cut_all(self, reason: str = "The server is shutting down: the reply was cut short.") -> int:
        """End every open stream now (the shutdown deadline passed): each stops within a token and
        its transport reports ``reason`` in band. Returns how many were cut."""
        with self._open_lock:
            streams = list(self._open)
        for stream in streams:
            stream.cut = reason
            stream.cancel.set()
        return len(streams)

    def chat(self, message: str, history: Any, system_prompt: str = "", max_new_tokens: float = 512,
             temperature: float = 0.7, top_p: float = 0.95, top_k: float = 40, repetition_penalty: float = 1.0,
             seed: float | None = -1, min_p: float = 0.0, typical_p: float = 1.0, presence_penalty: float = 0.0,
             frequency_penalty: float = 0.0, dry_multiplier: float = 0.0, xtc_probability: float = 0.0,
             xtc_threshold: float = 0.1, mirostat: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
             no_repeat_ngram_size: int = 0, stop: Any = (), enable_thinking: Any = None, endpoint: str = "chat",
             client: str | None = None, turn: Turn | None = None) -> Iterator[tuple[str, dict]]:
        """Yield (growing reply, {}) at most every ``stream_interval_s``, then (reply, stats): the
        request's timing and token counts. The parameters are /chat's, in its order; ``turn``: the chat
        UI's options (Continue, fitting the context), and where it reads the open stream and the note back."""
        t0 = time.perf_counter()
        samplers = dict(min_p=min_p, typical_p=typical_p, presence_penalty=presence_penalty,
                        frequency_penalty=frequency_penalty, dry_multiplier=dry_multiplier,
                        xtc_probability=xtc_probability, xtc_threshold=xtc_threshold, mirostat=mirostat,
                        mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, no_repeat_ngram_size=no_repeat_ngram_size)
        request = build_request(message, history, system_prompt, max_new_tokens, temperature, top_p, top_k,
                                repetition_penalty, seed, stop, self.limits, enable_thinking, **samplers)
        request = self.prepare_turn(request, turn)
        yield from self._run(request, endpoint, client, t0, turn)

    def complete(self, prompt: str, max_new_tokens: float = 256, temperature: float = 0.7, top_p: float = 0.95,
                 top_k: float = 40, repetition_penalty: float = 1.0, seed: float | None = -1, stop: Any = (),
                 endpoint: str = "complete", client: str | None = None) -> Iterator[tuple[str, dict]]:
        """The raw continuation of ``prompt`` (no chat template): (continuation so far, {}) then
        (continuation, stats)."""
        t0 = time.perf_counter()
        params = sampling_params(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
        request = completion_request(prompt, params, stop, self.limits)
        yield from self._run(request, endpoint, client, t0)

    def _run(self, request: ChatRequest, endpoint: str, client: str | None, t0: float,
             turn: Turn | None = None) -> Iterator[tuple[str, dict]]:
        stream = self.open(request, endpoint=endpoint, client=client, t0=t0)
        if turn is not None:
            turn.stream = stream
        reply, last_sent, sent_any = "", 0.0, False
        try:
            for delta in stream:
                reply += delta.text
                now = time.perf_counter()
                if delta.text and (not sent_any or now - last_sent >= self.stream_interval_s):
                    last_sent, sent_any = now, True
                    yield reply, {}
        finally:
            stream.close()
        stats = stream.stats.as_dict()
        if turn is not None and turn.note:
            stats["note"] = turn.note
        yield reply, stats

    def prepare_turn(self, request: ChatRequest, turn: Turn | None) -> ChatRequest:
        """Apply the chat UI's ``turn`` options: Continue (the last message becomes the assistant's
        reply to extend) and fitting the context (the oldest turns left out, ``turn.note`` says so)."""
        if turn is None:
            return request
        if turn.continue_final:
            *head, last = request.messages
            request = replace(request, messages=(*head, Message("assistant", last.content)), continue_final=True)
        if turn.fit_context:
            request, turn.dropped, turn.context_length = fit_context(self.manager, request)
            if turn.dropped:
                turn.note = (f"{turn.dropped} oldest message{'s' if turn.dropped != 1 else ''} left out to fit "
                             f"the {turn.context_length}-token context")
        return request


@dataclass(eq=False)
class Turn:
    """One chat-UI turn's options and what it learns: ``continue_final`` extends the reply passed as the
    message instead of answering it; ``fit_context`` leaves the oldest turns out (system prompt kept)
    rather than refusing a conversation longer than the context. Filled in: the open ``stream`` (its
    stats are final once it is closed, Stop included), how many messages were ``dropped``, the ``note``."""

    continue_final: bool = False
    fit_context: bool = False
    stream: ChatStream | None = None
    dropped: int = 0
    context_length: int = 0
    note: str | None = None


def prompt_budget(n_ctx: int, max_new_tokens: int, max_prompt_tokens: int = 0) -> int:
    """Prompt tokens a conversation may take: the context less room for the reply (max_new_tokens,
    at most a quarter of the context), and at most --max-prompt-tokens."""
    budget = n_ctx - min(max_new_tokens, n_ctx // 4)
    return min(budget, max_prompt_tokens) if max_prompt_tokens else budget


def drop_oldest_turn(messages: tuple[Message, ...], keep_last: int) -> tuple[tuple[Message, ...], int]:
    """``messages`` without its oldest turn (a user message and the replies up to the next user
    message; system messages stay), never touching the last ``keep_last`` messages. Returns the
    shorter tuple and how many messages went (0: nothing left to drop)."""
    head = [i for i, m in enumerate(messages) if m.role != "system"]
    droppable = set(range(len(messages) - keep_last))
    if not head or head[0] not in droppable:
        return messages, 0
    start = head[0]
    end = start + 1
    while end in droppable and messages[end].role not in ("user", "system"):
        end += 1
    if end not in droppable and end < len(messages) and messages[end].role != "user":
        return messages, 0  # the turn runs into the kept tail: nothing can go without cutting it
    return messages[:start] + messages[end:], end - start


def fit_messages(messages: tuple[Message, ...], count, budget: int, keep_last: int = 1) -> tuple[tuple[Message, ...], int]:
    """Leave out the oldest turns until ``count(messages) <= budget``; the system prompt and the last
    ``keep_last`` messages always stay (the backend then refuses if even that does not fit).
    Returns (messages, how many were left out)."""
    dropped = 0
    while count(messages) > budget:
        messages, n = drop_oldest_turn(messages, keep_last)
        if not n:
            break
        dropped += n
    return messages, dropped


def fit_context(manager: ModelManager, request: ChatRequest) -> tuple[ChatRequest, int, int]:
    """``request`` with its oldest turns left out so that its prompt leaves room for the reply in the
    loaded model's context. A backend that cannot count tokens gets the request unchanged."""
    n_ctx = manager.context_length()
    if not n_ctx:
        return request, 0, 0

    def count(messages):
        return manager.count_prompt_tokens(replace(request, messages=messages))

    try:
        count(request.messages)
    except InvalidRequest:  # this backend cannot count: it refuses a prompt too long, as before
        return request, 0, n_ctx
    budget = prompt_budget(n_ctx, request.params.max_new_tokens, request.max_prompt_tokens)
    messages, dropped = fit_messages(request.messages, count, budget, keep_last=2 if request.continue_final else 1)
    return replace(request, messages=messages), dropped, n_ctx
