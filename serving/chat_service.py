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
from collections.abc import Iterator
from typing import Any

from backends.base import ChatRequest, Message, SamplingParams
from backends.errors import InvalidRequest
from backends.manager import Generation, ModelManager
from serving.ratelimit import RateLimiter

# A streamed reply is sent to the browser at most this often (each Gradio chunk carries the whole
# value, so one update per token costs O(n^2) bytes on long replies). The first token goes at once.
STREAM_INTERVAL_S = 0.04
MAX_MESSAGE_CHARS = 200_000
MAX_STOP_STRINGS = 16


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
            if (item.get("metadata") or {}).get("title"):
                continue  # UI annotations (the stats line under a reply) are not conversation
            role = item.get("role")
            if role not in ("user", "assistant", "system"):
                raise InvalidRequest(f"Unknown role {role!r} in history.", "history")
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


def build_request(message: str, history: Any, system_prompt: str, max_new_tokens: float, temperature: float,
                  top_p: float, top_k: float, repetition_penalty: float, seed: float | None,
                  stop: Any = ()) -> ChatRequest:
    message = text_of(message)
    if not message.strip():
        raise InvalidRequest("The message is empty: type something to send.", "message")
    if len(message) > MAX_MESSAGE_CHARS:
        raise InvalidRequest(f"The message is {len(message):,} characters; the limit is {MAX_MESSAGE_CHARS:,}.", "message")
    messages = []
    if system_prompt and system_prompt.strip():
        messages.append(Message("system", system_prompt.strip()))
    messages += [m for m in normalize_history(history) if m.role != "system" or not messages]
    messages.append(Message("user", message))
    params = SamplingParams(
        max_new_tokens=as_int(max_new_tokens, "max_new_tokens"),
        temperature=as_number(temperature, "temperature"),
        top_p=as_number(top_p, "top_p"),
        top_k=as_int(top_k, "top_k"),
        repetition_penalty=as_number(repetition_penalty, "repetition_penalty"),
        seed=None if seed is None or seed == "" else as_int(seed, "seed"),
    ).validated()
    return ChatRequest(tuple(messages), params, stop_strings(stop))


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
    out = tuple(s for s in items if s)
    if len(out) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"At most {MAX_STOP_STRINGS} stop strings.", "stop")
    return out


def as_number(v: Any, name: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{name} must be a number, got {v!r}.", name) from None
    if f != f or f in (float("inf"), float("-inf")):
        raise InvalidRequest(f"{name} must be a finite number.", name)
    return f


def as_int(v: Any, name: str) -> int:
    f = as_number(v, name)
    if f != int(f):
        raise InvalidRequest(f"{name} must be a whole number, got {v!r}.", name)
    return int(f)


class ChatStream:
    """An open generation plus the client's rate-limit slot. Iterate it for TextDeltas; ``stats``
    is final once iteration ends. ``close()`` (or the end of the stream) cancels and frees both."""

    def __init__(self, generation: Generation, cancel: threading.Event, release: contextlib.ExitStack):
        self._generation = generation
        self.cancel = cancel
        self._release = release
        self.stats = generation.stats

    def __iter__(self):
        try:
            yield from self._generation
        finally:
            self.close()

    def close(self) -> None:
        self.cancel.set()  # the client went away or we are done: stop the model within a token
        self._generation.close()
        self._release.close()


class ChatService:
    def __init__(self, manager: ModelManager, limiter: RateLimiter | None = None,
                 stream_interval_s: float = STREAM_INTERVAL_S):
        self.manager = manager
        self.limiter = limiter or RateLimiter()
        self.stream_interval_s = stream_interval_s

    def open(self, request: ChatRequest, *, endpoint: str, client: str | None = None,
             t0: float | None = None) -> ChatStream:
        """Start a generation for ``client`` (rate limits first). Raises Busy / NoModelLoaded here,
        before anything streams, so each transport can answer with a plain error."""
        release = contextlib.ExitStack()
        release.enter_context(self.limiter.slot(client))
        cancel = threading.Event()
        try:
            generation = self.manager.stream(request, cancel, endpoint=endpoint, t0=t0, client=client)
        except BaseException:
            release.close()
            raise
        return ChatStream(generation, cancel, release)

    def chat(self, message: str, history: Any, system_prompt: str = "", max_new_tokens: float = 512,
             temperature: float = 0.7, top_p: float = 0.95, top_k: float = 40, repetition_penalty: float = 1.0,
             seed: float | None = -1, stop: Any = (), endpoint: str = "chat",
             client: str | None = None) -> Iterator[tuple[str, dict]]:
        """Yield (growing reply, {}) at most every ``stream_interval_s``, then (reply, stats): the
        request's timing and token counts."""
        t0 = time.perf_counter()
        request = build_request(message, history, system_prompt, max_new_tokens, temperature, top_p, top_k,
                                repetition_penalty, seed, stop)
        stream = self.open(request, endpoint=endpoint, client=client, t0=t0)
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
        yield reply, stream.stats.as_dict()
