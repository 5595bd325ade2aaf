"""A scripted backend for UI-logic tests (beside, never instead of, the real-model tests).

Each test makes its own ``FakeScript`` and registry: nothing is shared through class attributes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator

from backends.base import Backend, ChatRequest, LoadedModel, ModelSpec, TextDelta, _no_progress
from backends.errors import BackendError, ContextLengthExceeded
from backends.registry import BackendRegistry


class FakeScript:
    """The replies a test queues and the requests its fake backend saw."""

    def __init__(self, token_delay: float = 0.0, slots: int = 1):
        self.slots = slots  # the backend's max_concurrency
        self.replies: deque = deque()
        self.seen: list[ChatRequest] = []
        self.token_delay = token_delay

    def enqueue(self, *replies) -> None:
        """Each reply: a list of text pieces (one token each; a piece that is an exception is raised
        there), or an exception to raise before the first token."""
        self.replies.extend(replies)


class FakeBackend(Backend):
    name = "fake"
    capabilities = frozenset({"stream"})
    quantizations = ("none",)
    default_quantization = "none"

    def __init__(self, script: FakeScript, cache_dir=None):
        self.script = script
        self.loaded = False
        self.n_ctx = 4096

    def load(self, spec: ModelSpec, progress=_no_progress) -> LoadedModel:
        if spec.source == "fail":
            raise BackendError("scripted load failure")
        self.loaded = True
        self.n_ctx = spec.n_ctx
        return LoadedModel(spec.source, self.name, "none", spec.source, spec.n_ctx, 1234, 0.0, "cpu")

    def unload(self) -> None:
        self.loaded = False

    @property
    def max_concurrency(self) -> int:
        return self.script.slots

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[TextDelta]:
        """One token per scripted piece; a prompt token per word (7 at least); the budget and the
        context are honoured like a real backend's."""
        self.script.seen.append(request)
        script = self.script.replies.popleft() if self.script.replies else ["ok"]
        if isinstance(script, BaseException):
            raise script
        n_prompt = max(7, sum(len(m.content.split()) for m in request.messages))
        if n_prompt >= self.n_ctx:
            raise ContextLengthExceeded(f"The conversation is {n_prompt} tokens long but the context holds {self.n_ctx}.")
        budget = min(request.params.max_new_tokens, self.n_ctx - n_prompt)
        for i, piece in enumerate(script):
            if cancel.is_set():
                yield TextDelta("", finish_reason="cancelled", prompt_tokens=n_prompt)
                return
            if i == budget:
                yield TextDelta("", finish_reason="length", prompt_tokens=n_prompt)
                return
            if isinstance(piece, BaseException):  # a failure in mid-stream, after the pieces before it
                raise piece
            time.sleep(self.script.token_delay)
            yield TextDelta(piece, tokens=1)
        yield TextDelta("", finish_reason="stop", prompt_tokens=n_prompt)


def fake_registry(script: FakeScript, features: frozenset[str] = frozenset()) -> BackendRegistry:
    """A registry whose one backend, "fake", plays ``script`` and declares ``features`` (tools,
    constraint, prompt, ...: what ``check_request`` lets through)."""

    class ScriptedBackend(FakeBackend):
        def __init__(self, cache_dir=None):
            super().__init__(script, cache_dir)

    ScriptedBackend.features = frozenset(features) or FakeBackend.features
    return BackendRegistry([ScriptedBackend])


def scripted_manager(features: frozenset[str] = frozenset(), slots: int = 1):
    """(a ModelManager with the scripted "fake" model loaded, its FakeScript): for API-edge tests
    that need exact replies, mid-stream failures included, beside the real-model tests."""
    from backends.manager import ModelManager
    from monitoring.metrics import MetricsRecorder

    script = FakeScript(slots=slots)
    manager = ModelManager(metrics=MetricsRecorder(), registry=fake_registry(script, features))
    manager.load(ModelSpec(source="scripted", backend="fake", n_ctx=512))
    return manager, script
