"""The one chat service every transport uses: the UI, Gradio's /chat and /v1 only translate to and
from it. It opens the generation (a request made by ``serving/requests.py``) on the ModelManager
under the per-client limits (the manager takes the model slot, applies stop strings, and times and
records it); closing the stream cancels the generation and frees the client's slot. It also fits
a long conversation into the model's context for the chat UI.

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

from backends.base import ChatRequest, Message
from backends.errors import InvalidRequest, ServerShuttingDown
from backends.manager import Generation, ModelManager
from serving.attachments import Attachment
from serving.model_names import resolve_model
from serving.pieces import ReplyDelta, ReplyParser
from serving.ratelimit import RateLimiter
from serving.requests import CHAT_OPTIONS, RequestLimits, as_text, chat_call, completion_call

# A streamed reply is sent to the browser at most this often (each Gradio chunk carries the whole
# value, so one update per token costs O(n^2) bytes on long replies). The first token goes at once.
STREAM_INTERVAL_S = 0.04


class ChatStream:
    """An open generation plus the client's rate-limit slot. Iterate it for ReplyDeltas (its
    TextDeltas parsed once, ``serving/pieces.py``): the last one, after the generation is over,
    carries the finish reason, the tool calls and the stats. ``stats`` is final once iteration
    ends. ``close()`` (or the end of the stream) cancels and frees both."""

    def __init__(self, generation: Generation, cancel: threading.Event, release: contextlib.ExitStack,
                 parser: ReplyParser):
        self._generation = generation
        self.cancel = cancel
        self._release = release
        self._parser = parser
        self.stats = generation.stats
        self.cut: str | None = None  # why the server ended it (``ChatService.cut_all``), if it did

    def __iter__(self) -> Iterator[ReplyDelta]:
        try:
            for delta in self._generation:
                yield self._parser.feed(delta)
            yield self._parser.end(self.stats.as_dict())
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
        stream = ChatStream(generation, cancel, release, ReplyParser(request))
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
                stream = ChatStream(generation, cancel, release, ReplyParser(request))
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

    def chat(self, message: Any, history: Any, system_prompt: Any = "", *values: Any, endpoint: str = "chat",
             client: str | None = None, turn: Turn | None = None, files: Sequence[Attachment] = (),
             model: Any = None,
             **named: Any) -> Iterator[ReplyDelta]:
        """Yield the reply's pieces (``serving/pieces.py``) at most every ``stream_interval_s``; the
        last carries the stats: the request's timing and token counts. The parameters are /chat's, in
        its order (``values`` after system_prompt: ``serving.requests.CHAT_OPTIONS``, or ``named``),
        then ``model`` (/chat's last: a name from /v1/models, "" = the chat's model; also as the value
        after the options); ``turn``: the chat UI's options (Continue, fitting the context), and where
        it reads the open stream and the note back; ``files``: the message's attachments, already read
        (``serving.attachments``)."""
        t0 = time.perf_counter()
        if len(values) > len(CHAT_OPTIONS):  # the model picker's value after the options
            values, model = values[:len(CHAT_OPTIONS)], values[len(CHAT_OPTIONS)]
        name = as_text(model or "", "model").strip()
        pool_model = resolve_model(self.manager, name)[1] if name else None  # a bad name: refused here
        request = chat_call(message, history, system_prompt, values, named, self.limits, files)
        request = self.prepare_turn(request, turn)
        yield from self._run(request, endpoint, client, t0, turn, pool_model)

    def complete(self, prompt: Any, *values: Any, endpoint: str = "complete", client: str | None = None,
                 turn: Turn | None = None, **named: Any) -> Iterator[ReplyDelta]:
        """The raw continuation of ``prompt`` (no chat template), in pieces as ``chat`` yields them
        (``text`` is the raw text). ``values`` / ``named``: /complete's parameters after the prompt
        (``serving.requests.COMPLETE_OPTIONS``); ``turn``: where the Notebook reads the open stream
        (its stats after Stop)."""
        t0 = time.perf_counter()
        request = completion_call(prompt, values, named, self.limits)
        yield from self._run(request, endpoint, client, t0, turn)

    def _run(self, request: ChatRequest, endpoint: str, client: str | None, t0: float,
             turn: Turn | None = None, model: str | None = None) -> Iterator[ReplyDelta]:
        """The stream's pieces, coalesced: one at most every ``stream_interval_s`` (the first token
        at once), each holding everything since the one before; the last carries the stats (with
        ``turn.note``)."""
        stream = self.open(request, endpoint=endpoint, client=client, t0=t0, model=model)
        if turn is not None:
            turn.stream = stream
        pending, last_sent, sent_any = ReplyDelta(), 0.0, False
        try:
            for piece in stream:
                pending = pending.then(piece)
                now = time.perf_counter()
                if piece.raw and (not sent_any or now - last_sent >= self.stream_interval_s):
                    last_sent, sent_any = now, True
                    yield pending
                    pending = ReplyDelta()
        finally:
            stream.close()
        stats = dict(pending.stats or {})  # the last piece's: the stream's end
        if turn is not None and turn.note:
            stats["note"] = turn.note
        yield replace(pending, stats=stats)

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
