"""A scripted backend for UI-logic tests (beside, never instead of, the real-model tests)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator

from backends.base import Backend, ChatRequest, LoadedModel, ModelSpec, TextDelta, _no_progress
from backends.errors import BackendError


class FakeBackend(Backend):
    name = "fake"
    capabilities = frozenset({"stream"})
    quantizations = ("none",)
    default_quantization = "none"
    scripts: deque = deque()  # replies queued with enqueue(); shared by instances of one test
    seen: list[ChatRequest] = []
    token_delay = 0.0

    def __init__(self, cache_dir=None):
        self.loaded = False

    @classmethod
    def enqueue(cls, *replies) -> None:
        """Each reply: a list of text pieces (one token each), or an exception to raise."""
        cls.scripts.extend(replies)

    def load(self, spec: ModelSpec, progress=_no_progress) -> LoadedModel:
        if spec.source == "fail":
            raise BackendError("scripted load failure")
        self.loaded = True
        return LoadedModel(spec.source, self.name, "none", spec.source, 4096, 1234, 0.0, "cpu")

    def unload(self) -> None:
        self.loaded = False

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[TextDelta]:
        self.seen.append(request)
        script = self.scripts.popleft() if self.scripts else ["ok"]
        if isinstance(script, BaseException):
            raise script
        n = 0
        for piece in script:
            if cancel.is_set():
                yield TextDelta("", finish_reason="cancelled", prompt_tokens=7)
                return
            time.sleep(self.token_delay)
            n += 1
            yield TextDelta(piece, tokens=1)
        yield TextDelta("", finish_reason="stop", prompt_tokens=7)


REGISTRY = {"fake": ("tests.fakes", "FakeBackend")}
