"""ModelManager: the app's one piece of mutable state.

It owns the resident model (one at a time for chat; the quantization lab borrows extra backends
through ``open_backend``), loads and switches under a lock, and runs every generation through
one timing path (``optimization/metrics.py``). A failed load leaves the previous model serving:
the new model is loaded beside the old one and swapped in only once it works.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backends.base import MAX_PARALLEL, Backend, ChatRequest, LoadedModel, ModelSpec, Progress, TextDelta, _no_progress
from backends.errors import BackendError, Busy, InvalidRequest, ModelLoadError, NoModelLoaded
from optimization import quantize
from optimization.metrics import MetricsRecorder, RequestStats, RequestTimer

BACKENDS: dict[str, tuple[str, str]] = {
    "llamacpp": ("backends.llamacpp", "LlamaCppBackend"),
    "transformers": ("backends.transformers", "TransformersBackend"),
    "remote": ("backends.remote", "RemoteBackend"),
}


def backend_class(name: str, registry: dict[str, tuple[str, str]] = BACKENDS) -> type[Backend]:
    if name not in registry:
        raise ModelLoadError(f"Unknown backend {name!r}: choose one of {', '.join(registry)}.")
    module, cls = registry[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise ModelLoadError(f"The {name} backend is not installed here ({exc.name} is missing).") from exc


@dataclass
class _Resident:
    backend: Backend
    info: LoadedModel
    spec: ModelSpec
    slots: threading.Semaphore
    active: set[threading.Event] = field(default_factory=set)
    idle: threading.Condition = field(default_factory=threading.Condition)


class ModelManager:
    def __init__(self, cache_dir: Path | None = None, allowed_dir: Path | None = None,
                 registry: dict[str, tuple[str, str]] = BACKENDS, metrics: MetricsRecorder | None = None,
                 log_prompts: bool = False):
        self.registry = registry  # backend name -> (module, class); tests add a fake one
        self.cache_dir = cache_dir
        self.allowed_dir = allowed_dir  # set when serving beyond loopback: local paths confined here
        self.metrics = metrics or MetricsRecorder()
        self.log_prompts = log_prompts
        self._resident: _Resident | None = None
        self._swap = threading.Lock()  # guards self._resident
        self._loading_lock = threading.Lock()  # one load at a time
        self.loading: ModelSpec | None = None
        self.last_error: str | None = None

    # --- state -----------------------------------------------------------------------------------

    @property
    def current(self) -> LoadedModel | None:
        r = self._resident
        return r.info if r else None

    @property
    def state(self) -> str:
        if self._resident is not None:
            return "ready"
        return "loading" if self.loading is not None else "empty"

    def status(self) -> dict:
        cur = self.current
        return {
            "status": self.state,
            "model": cur.as_dict() if cur else None,
            "loading": repr(self.loading) if self.loading else None,
            "last_error": self.last_error,
        }

    # --- load / unload ---------------------------------------------------------------------------

    def validate(self, spec: ModelSpec) -> ModelSpec:
        """Cheap checks done before anything is touched: backend, quantization, path."""
        from backends import sources

        cls = backend_class(spec.backend, self.registry)
        if not 1 <= spec.parallel <= MAX_PARALLEL:
            raise InvalidRequest(f"parallel must be between 1 and {MAX_PARALLEL}, got {spec.parallel}.", "parallel")
        quant = quantize.normalize_quantization(spec.backend, spec.quantization, cls.quantizations,
                                                cls.default_quantization)
        if "files" in cls.capabilities and not sources.looks_like_repo_id(spec.source.strip()):
            sources.resolve_local(spec.source, self.allowed_dir)  # Hub repo ids are resolved on load
        return spec.with_(quantization=quant)

    def load(self, spec: ModelSpec, progress: Progress = _no_progress) -> LoadedModel:
        spec = self.validate(spec)
        if not self._loading_lock.acquire(blocking=False):
            raise Busy(f"Another model is loading ({self.loading.source if self.loading else '?'}); try again when it is done.")
        backend: Backend | None = None
        try:
            self.loading = spec
            self.last_error = None
            backend = backend_class(spec.backend, self.registry)(cache_dir=self.cache_dir)
            info = backend.load(spec, progress)
            old = self._swap_in(_Resident(backend, info, spec, threading.Semaphore(backend.max_concurrency)))
            backend = None
            if old is not None:
                progress(0.97, f"Unloading {old.info.name}")
                self._retire(old)
            return info
        except BackendError as exc:
            self.last_error = str(exc)
            raise
        except MemoryError as exc:
            from backends.errors import OutOfMemory

            self.last_error = "Out of memory while loading."
            raise OutOfMemory(f"Not enough memory to load {spec.source}.") from exc
        finally:
            if backend is not None:  # the load failed half-way: free what it took
                backend.unload()
            self.loading = None
            self._loading_lock.release()

    def unload(self) -> LoadedModel | None:
        with self._swap:
            old, self._resident = self._resident, None
        if old is None:
            return None
        self._retire(old)
        return old.info

    def _swap_in(self, new: _Resident) -> _Resident | None:
        with self._swap:
            old, self._resident = self._resident, new
        return old

    def _retire(self, old: _Resident, grace: float = 5.0) -> None:
        """Cancel the streams still running on ``old``, wait for them, free its memory."""
        with old.idle:
            for ev in old.active:
                ev.set()
            old.idle.wait_for(lambda: not old.active, timeout=grace)
        old.backend.unload()

    # --- generation ------------------------------------------------------------------------------

    def stream(self, request: ChatRequest, cancel: threading.Event, endpoint: str = "chat",
               t0: float | None = None, client: str | None = None) -> Generation:
        """Stream a reply from the resident model, timed and recorded. Raises NoModelLoaded when
        nothing is loaded (before the first yield)."""
        request = ChatRequest(request.messages, request.params.validated())
        with self._swap:
            r = self._resident
            if r is None:
                raise NoModelLoaded()
            with r.idle:
                r.active.add(cancel)
        timer = RequestTimer(self.metrics.next_id(), endpoint, r.info.name, r.info.quantization, t0)
        timer.stats.client = client
        if self.log_prompts:
            timer.stats.prompt = request.messages[-1].content
        return Generation(self._run(r, request, cancel, timer), timer.stats)

    def _run(self, r: _Resident, request: ChatRequest, cancel: threading.Event, timer: RequestTimer) -> Iterator[TextDelta]:
        acquired = False

        def acquire() -> bool:
            nonlocal acquired
            while not r.slots.acquire(timeout=0.05):
                if cancel.is_set():
                    return False
            acquired = True
            return True

        try:
            yield from self.metrics.timed(timer, lambda: r.backend.stream(request, cancel), acquire)
        finally:
            cancel.set()
            if acquired:
                r.slots.release()
            with r.idle:
                r.active.discard(cancel)
                r.idle.notify_all()

    def generate(self, request: ChatRequest, endpoint: str = "chat", t0: float | None = None) -> tuple[str, dict]:
        """Non-streamed convenience: full text and the request's stats."""
        gen = self.stream(request, threading.Event(), endpoint, t0)
        text = "".join(delta.text for delta in gen)
        return text, gen.stats.as_dict()


class Generation:
    """A running generation: iterate it for TextDeltas; ``stats`` fills in as it goes and is final
    once iteration ends. Closing it (or dropping it) cancels the generation."""

    def __init__(self, deltas: Iterator[TextDelta], stats: RequestStats):
        self._deltas = deltas
        self.stats = stats

    def __iter__(self) -> Iterator[TextDelta]:
        return self._deltas

    def close(self) -> None:
        self._deltas.close()
