"""Running one or more ChatStreams (an API request's choices) from the event loop: each generation
runs on its own thread; their pieces arrive here as (choice index, ReplyDelta), in arrival order.

``Choices.start()`` waits for every choice's first delta, so an error raised before anything was
generated (a prompt longer than the context, a feature the engine refuses) is still a plain HTTP
error rather than a broken 200 stream.

``event_stream`` is the one writer of every streamed answer: a dialect's events, each written in its
``EventFormat`` (server-sent events, ``sse``, or one JSON object a line, ``NDJSON``), in a response
that stops the generations when it ends for any reason.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from fastapi.responses import StreamingResponse

from serving.chat_service import ChatStream
from serving.pieces import ReplyDelta

_END = object()


class Choices:
    def __init__(self, streams: Sequence[ChatStream]):
        self.streams = list(streams)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._buffered: list[tuple[int, object]] = []
        self._ended = 0

    def _produce(self, index: int, stream: ChatStream, loop: asyncio.AbstractEventLoop) -> None:
        put = self._queue.put_nowait
        try:
            for delta in stream:
                loop.call_soon_threadsafe(put, (index, delta))
        except BaseException as exc:  # delivered to the consumer, never lost
            loop.call_soon_threadsafe(put, (index, exc))
        finally:
            stream.close()  # frees the model slot and the client's rate-limit slot
            loop.call_soon_threadsafe(put, (index, _END))

    def cancel(self) -> None:
        for s in self.streams:
            s.cancel.set()

    async def start(self) -> None:
        """Start every generation and wait for each one's first delta; an error among them is raised
        here (after cancelling and draining the others)."""
        loop = asyncio.get_running_loop()
        for i, s in enumerate(self.streams):
            threading.Thread(target=self._produce, args=(i, s, loop), name="api-generate", daemon=True).start()
        started: set[int] = set()
        while len(started) < len(self.streams):
            index, item = await self._queue.get()
            if isinstance(item, BaseException):
                self.cancel()
                await self._drain()
                raise item
            started.add(index)
            self._buffered.append((index, item))
            if item is _END:
                self._ended += 1

    async def _drain(self) -> None:
        """Wait until every producer has ended (their _END markers), dropping what they send."""
        ended = self._ended
        while ended < len(self.streams):
            _, item = await self._queue.get()
            if item is _END:
                ended += 1
        self._ended = ended

    async def __aiter__(self) -> AsyncIterator[tuple[int, ReplyDelta]]:
        try:
            for index, item in self._buffered:
                if item is not _END:
                    yield index, item
            self._buffered = []
            while self._ended < len(self.streams):
                index, item = await self._queue.get()
                if item is _END:
                    self._ended += 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                yield index, item
        finally:
            self.cancel()  # client gone or done: every producer stops within one token


class GenerationResponse(StreamingResponse):
    """A streamed reply that cancels its generations when the response ends for any reason: a
    client that disconnects stops the model within a token, without waiting for the garbage
    collector to close the abandoned async generators."""

    def __init__(self, content, cancel, **kwargs):
        super().__init__(content, **kwargs)
        self._cancel = cancel

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cancel()


@dataclass(frozen=True)
class EventFormat:
    """How a dialect writes its stream: the media type, one event as text, and what follows the last."""

    media_type: str
    encode: Callable[[dict], str]
    end: str = ""


def sse_data(event: dict) -> str:
    """One server-sent event with only a ``data:`` line."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def ndjson_line(event: dict) -> str:
    return json.dumps(event, ensure_ascii=False) + "\n"


NDJSON = EventFormat("application/x-ndjson", ndjson_line)
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event_stream(events: AsyncIterator[dict], fmt: EventFormat, cancel: Callable[[], None]) -> GenerationResponse:
    """The streamed answer: ``events`` written in ``fmt``; ``cancel`` runs when it ends for any reason."""

    async def write() -> AsyncIterator[str]:
        async for event in events:
            yield fmt.encode(event)
        if fmt.end:
            yield fmt.end

    return GenerationResponse(write(), cancel, media_type=fmt.media_type, headers=STREAM_HEADERS)
