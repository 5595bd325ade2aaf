"""ModelManager: the app's one piece of mutable state.

It owns the chat's resident model and the models the quantization lab leases (``open_variant``).
Every generation, chat or lab, runs through one path here: the model's slots (granted in arrival
order), stop strings, and the injected Recorder (timing, /metrics, the request log, the Monitor).
A failed load leaves the previous model serving: the new model is loaded beside the old one and
swapped in only once it works. Then new requests go to the new model while the old one finishes
the replies it is running (a drain, up to ``drain_s``); only then is it freed. A reply the server
has to cut (an unload, a drain past its bound) ends with a ModelUnloaded error its client sees,
never as a short answer that looks finished.

With a model pool (``--models-dir``, ``backends/pool.py``), requests may also name a model: the pool
loads it on demand beside the chat's model and leases it to the request while it runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backends.files import sources
from backends.base import (MAX_PARALLEL, Backend, ChatRequest, LoadedModel, ModelSpec, Progress, Recorder, TextDelta,
                           _no_progress, check_vision)
from backends.errors import (
    BackendError,
    Busy,
    Cancelled,
    InvalidRequest,
    ModelLoadError,
    ModelUnloaded,
    NoModelLoaded,
    OutOfMemory,
)
from backends.options import LOADER
from backends.pool import Catalogue, ModelPool
from backends.registry import BackendRegistry, default_registry
from backends.slots import FairSlots
from backends.stops import apply_stops
from backends.urls import ServerEngine, remote_allowed


@dataclass(eq=False)  # identity: held in a set
class _Resident:
    backend: Backend
    info: LoadedModel
    spec: ModelSpec
    slots: FairSlots
    active: set[threading.Event] = field(default_factory=set)
    idle: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False
    cut: set[threading.Event] = field(default_factory=set)  # generations the server ended (not their clients)
    stop_drain: bool = False  # the server is stopping: cut what still runs now
    pool_name: str | None = None  # the name the pool loaded it under (None: the chat's model or a lab variant)
    pins: int = 0  # requests between naming it and running on it: the pool does not evict it meanwhile
    last_used: float = 0.0  # time.monotonic() of its last request (least recently used is evicted first)
    on_idle: Callable[[], None] | None = None  # called when a request on it ends (the pool waits for room)


DRAIN_S = 300.0  # how long a replaced model may finish its running replies before they are cut
CUT_GRACE_S = 5.0  # how long cut generations get to stop before the model is freed anyway


class ModelManager:
    def __init__(self, *, metrics: Recorder, cache_dir: Path | None = None, allowed_dir: Path | None = None,
                 registry: BackendRegistry | None = None, log_prompts: bool = False,
                 allowed_remote: tuple[str, ...] | None = None, server_engine: ServerEngine | None = None,
                 drain_s: float = DRAIN_S):
        self.registry = registry or default_registry()  # tests register a fake backend
        self.cache_dir = cache_dir
        self.allowed_dir = allowed_dir  # set when serving beyond loopback: local paths confined here
        self.allowed_remote = allowed_remote  # set when serving beyond loopback: remote bases must match one
        self.server_engine = server_engine or ServerEngine()  # the one engine --remote-api-key may go to
        self.metrics = metrics
        self.log_prompts = log_prompts
        self._resident: _Resident | None = None
        self._leases: set[_Resident] = set()  # lab variants, each with its own backend
        self._retiring: set[_Resident] = set()  # replaced or unloaded, finishing their replies
        self.drain_s = drain_s
        self._swap = threading.Lock()  # guards self._resident and self._leases
        self._loading_lock = threading.Lock()  # one chat load at a time
        self.loading: ModelSpec | None = None
        self.load_progress: tuple[float, str] | None = None  # the chat load's last step (fraction, text)
        self.last_error: str | None = None
        self.pool: ModelPool | None = None  # models by name (--models-dir); None: the chat's model alone

    def set_pool(self, catalogue: Catalogue, **limits: Any) -> ModelPool:
        """Serve the catalogue's models by name beside the chat's (``ModelPool``'s limits)."""
        self.pool = ModelPool(self, catalogue, **limits)
        return self.pool

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

    def leased(self) -> list[LoadedModel]:
        """The lab's variants held right now."""
        with self._swap:
            return [r.info for r in self._leases]

    def _held_residents(self) -> list[_Resident]:
        with self._swap:
            pooled = list(self.pool._named.values()) if self.pool is not None else []
            return ([self._resident] if self._resident else []) + pooled + list(self._leases) + list(self._retiring)

    def cache_bytes(self) -> int:
        """Host memory the held models' engines keep in caches beyond their own account (the host
        prompt cache): its own line in the memory account."""
        return sum(r.backend.cache_bytes() for r in self._held_residents())

    def held_models(self) -> list[LoadedModel]:
        """Every model in memory: the chat's, the pool's, the lab's, and replaced ones still finishing replies."""
        return [r.info for r in self._held_residents()]

    def held_by_role(self) -> list[tuple[str, LoadedModel]]:
        """Every model in memory once, with its role: "chat" (the chat's model), "pool" (loaded by
        name), "lab" (a variant the lab holds), "finishing" (replaced or unloaded, finishing replies)."""
        with self._swap:
            held = [("chat", self._resident)] if self._resident else []
            held += [("pool", r) for r in (self.pool._named.values() if self.pool is not None else ())]
            held += [("lab", r) for r in self._leases] + [("finishing", r) for r in self._retiring]
        return [(role, r.info) for role, r in held]

    def pool_models(self) -> list[LoadedModel]:
        """The models the pool loaded by name (not the chat's), resident now."""
        return [r.info for r in self.pool.residents()] if self.pool is not None else []

    def status(self) -> dict:
        cur = self.current
        pool = ({"pool": [{k: v for k, v in row.items() if k != "info"} for row in self.pool.listing()]}
                if self.pool is not None else {})
        return {
            **pool,
            "status": self.state,
            "model": cur.as_dict() if cur else None,
            "loading": describe_spec(self.loading) if self.loading else None,
            "loading_progress": ({"fraction": round(self.load_progress[0], 3), "step": self.load_progress[1]}
                                 if self.loading and self.load_progress else None),
            "last_error": self.last_error,
            "lab_models": [info.as_dict() for info in self.leased()],
            "finishing": self._finishing(),
            "options": self._load_options(),
        }

    def _finishing(self) -> list[dict]:
        """Replaced models still finishing the replies they were running (name, replies left)."""
        with self._swap:
            retiring = list(self._retiring)
        return [{"name": r.info.name, "quantization": r.info.quantization, "running": len(r.active)} for r in retiring]

    def _load_options(self) -> dict | None:
        """The loaded model's load options (what the Model tab's form shows), None when none is loaded."""
        r = self._resident
        if r is None:
            return None
        names = ("source", "backend", "quantization", "gguf_file", *(o.name for o in LOADER))
        return {name: getattr(r.spec, name) for name in names}

    def in_use_sources(self) -> list[str]:
        """Files and folders of every model held (chat, pool and lab): the caches never delete these."""
        return [r.info.source for r in self._held_residents() if "files" in type(r.backend).capabilities]

    # --- load / unload ---------------------------------------------------------------------------

    def validate(self, spec: ModelSpec) -> ModelSpec:
        """Cheap checks done before anything is touched: backend, quantization, slots, path."""
        cls = self.registry.get(spec.backend)
        if not 1 <= spec.parallel <= MAX_PARALLEL:
            raise InvalidRequest(f"parallel must be between 1 and {MAX_PARALLEL}, got {spec.parallel}.", "parallel")
        quant = cls.normalize_quantization(spec.quantization)
        spec = spec.with_(quantization=quant)
        source = (spec.source or "").strip()
        if ("files" in cls.capabilities and source != sources.EMBEDDED_ALIAS
                and not sources.looks_like_repo_id(source, self.allowed_dir)):
            # Resolved once, here: the backend opens exactly this absolute path (a relative name
            # is never looked up again against the working directory). Hub ids resolve on load.
            path = sources.resolve_local(source, self.allowed_dir)
            spec = spec.with_(source=str(path))
        if spec.mmproj:  # a projector file is read from the same places a model is
            spec = spec.with_(mmproj=str(sources.resolve_local(spec.mmproj.strip(), self.allowed_dir)))
        base = cls.remote_base(spec)
        if base is not None:
            if self.allowed_remote is not None and not remote_allowed(base, self.allowed_remote):
                raise InvalidRequest("This server does not allow that remote engine (see --allow-remote).", "api_base")
            # the server's key goes to its own engine only; another URL gets the caller's key or none
            spec = spec.with_(api_key=self.server_engine.key_for(base, spec.api_key))
        return spec

    def _open(self, spec: ModelSpec, progress: Progress) -> _Resident:
        """Load ``spec`` into a new backend instance; on any failure free what it took."""
        cls = self.registry.get(spec.backend)
        backend = cls(cache_dir=self.cache_dir)
        try:
            info = backend.load(spec, progress)
        except BackendError:
            backend.unload()
            raise
        except MemoryError as exc:
            backend.unload()
            raise OutOfMemory(f"Not enough memory to load {spec.source}.") from exc
        except ImportError as exc:
            backend.unload()
            raise ModelLoadError(f"The {spec.backend} backend is not installed here ({exc.name} is missing).") from exc
        except BaseException:
            backend.unload()
            raise
        return _Resident(backend, info, spec, FairSlots(backend.max_concurrency))

    def load(self, spec: ModelSpec, progress: Progress = _no_progress) -> LoadedModel:
        spec = self.validate(spec)
        if not self._loading_lock.acquire(blocking=False):
            if self.loading is None:  # the last load is done; the model it replaced is finishing its replies
                raise Busy("The model replaced by the last load is finishing its running replies; try again when it "
                           "is done (GET /health lists it under 'finishing').")
            raise Busy(f"Another model is loading ({self.loading.source}); try again when it is done.")
        def watched(fraction: float, text: str) -> None:
            self.load_progress = (fraction, text)
            progress(fraction, text)

        try:
            self.loading, self.load_progress = spec, None
            self.last_error = None
            new = self._open(spec, watched)
            with self._swap:
                old, self._resident = self._resident, new
                if old is not None:
                    self._retiring.add(old)
            self.loading = None  # the new model serves from here on
            if old is not None:
                self._retire(old, drain_s=self.drain_s, progress=progress)
            return new.info
        except BackendError as exc:
            self.last_error = str(exc)
            raise
        finally:
            self.loading = None
            self._loading_lock.release()

    def unload(self) -> LoadedModel | None:
        """Free the chat's model now: replies still running on it end with a ModelUnloaded error."""
        with self._swap:
            old, self._resident = self._resident, None
            if old is not None:
                self._retiring.add(old)
        if old is None:
            return None
        self._retire(old)
        return old.info

    def close(self) -> None:
        """Unload everything held (the chat's model and the lab's): the server is stopping. Engines'
        own threads end with their models, so the process can exit (transformers' batch thread is
        not a daemon)."""
        with self._swap:
            leases = list(self._leases)
            retiring = list(self._retiring)
        for r in retiring:  # a replaced model finishing its replies: cut them now
            with r.idle:
                r.stop_drain = True
                r.idle.notify_all()
        for r in leases:
            self._close_lease(r)
        if self.pool is not None:
            self.pool.close()
        self.unload()

    def open_variant(self, spec: ModelSpec, progress: Progress = _no_progress) -> Lease:
        """Load a model beside the chat's (for the lab) with the same checks; generations on it go
        through the same slots and timing path. Close the lease to free it."""
        r = self._open(self.validate(spec), progress)
        with self._swap:
            self._leases.add(r)
        return Lease(self, r)

    def borrow(self, name: str, progress: Progress = _no_progress) -> Lease:
        """The pool's model ``name`` (loaded first when it is not resident, even under
        --no-models-autoload: the lab asks for it explicitly) as a Lease: pinned, so not evicted, until
        the lease is closed; then it stays resident under the pool's rules (--models-max, --keep-alive,
        the memory budget) like any model loaded by name."""
        r = self.pool.acquire(name, autoload=True, progress=progress)
        return Lease(self, r, on_close=self.pool.unpin)

    def _close_lease(self, r: _Resident) -> None:
        with self._swap:
            if r not in self._leases:
                return
            self._leases.discard(r)
            self._retiring.add(r)
        self._retire(r)

    def _retire(self, old: _Resident, drain_s: float = 0.0, progress: Progress = _no_progress) -> None:
        """Free ``old`` (already out of the pool: no new request reaches it). With ``drain_s``, its
        running and queued generations first get up to that long to finish; those still running
        then are cut (each ends with ModelUnloaded, which its client sees); then its memory goes."""
        try:
            with old.idle:
                old.closed = True
                if drain_s > 0 and old.active and not old.stop_drain:
                    progress(0.97, f"Loaded; {old.info.name} finishes its {len(old.active)} running "
                                   f"repl{'ies' if len(old.active) != 1 else 'y'} before it is unloaded")
                    old.idle.wait_for(lambda: not old.active or old.stop_drain, timeout=drain_s)
                if old.active:
                    progress(0.98, f"Unloading {old.info.name}: cutting {len(old.active)} running repl"
                                   f"{'ies' if len(old.active) != 1 else 'y'}")
                for ev in old.active:
                    old.cut.add(ev)
                    ev.set()
                old.idle.wait_for(lambda: not old.active, timeout=CUT_GRACE_S)
            progress(0.99, f"Unloading {old.info.name}")
            old.backend.unload()
        finally:
            with self._swap:
                self._retiring.discard(old)

    # --- generation ------------------------------------------------------------------------------

    def stream(self, request: ChatRequest, cancel: threading.Event, endpoint: str = "chat",
               t0: float | None = None, client: str | None = None, model: str | None = None) -> Generation:
        """Stream a reply from the chat's model (or, with a pool, from the one named ``model``: loaded
        first when it is not resident, which blocks), timed and recorded. Raises NoModelLoaded when
        nothing is loaded, the pool's errors for a bad name (before the first yield)."""
        if self.pooled(model):
            r = self.pool.acquire(model)
            try:
                with self._swap:
                    return self._generation(r, request, cancel, endpoint, t0, client)
            finally:
                self.pool.unpin(r)
        with self._swap:
            r = self._resident
            if r is None:
                raise NoModelLoaded()
            return self._generation(r, request, cancel, endpoint, t0, client)

    def pooled(self, model: str | None) -> bool:
        """Whether ``model`` names a model for the pool (not the chat's model, by its name or 'default')."""
        if self.pool is None or model is None or model.strip() in ("", "default"):
            return False
        cur = self.current
        return cur is None or model != cur.name

    def _generation(self, r: _Resident, request: ChatRequest, cancel: threading.Event, endpoint: str,
                    t0: float | None, client: str | None) -> Generation:
        request = replace(request, params=request.params.validated())
        type(r.backend).check_request(request)  # an unsupported sampler or feature is refused by name
        check_vision(request, r.info)  # pictures for a text-only model: refused, naming the capability
        with r.idle:
            if r.closed:
                raise NoModelLoaded("That model was unloaded.")
            r.active.add(cancel)
        prompt = (request.prompt if request.prompt is not None else request.messages[-1].content) if self.log_prompts else None
        timer = self.metrics.start(endpoint, r.info.name, r.info.quantization, t0, client, prompt)
        timer.stats.sampling = request.params.changed()  # what the request log shows the engine was given
        return Generation(self._run(r, request, cancel, timer), timer.stats)

    def _run(self, r: _Resident, request: ChatRequest, cancel: threading.Event, timer: Any) -> Iterator[TextDelta]:
        acquired = False

        def acquire() -> bool:
            nonlocal acquired
            acquired = r.slots.acquire(cancel)
            if not acquired and cancel in r.cut:  # cut while waiting for a slot
                raise ModelUnloaded(_cut_message(r))
            return acquired

        def deltas() -> Iterator[TextDelta]:
            # a reply the server cut is an error the client sees, never a short reply that looks finished
            for delta in apply_stops(r.backend.stream(request, cancel), request.stop, cancel):
                if delta.finish_reason == "cancelled" and cancel in r.cut:
                    raise ModelUnloaded(_cut_message(r))
                yield delta

        try:
            yield from self.metrics.timed(timer, deltas, acquire)
        finally:
            cancel.set()
            _leave(r, cancel, acquired)

    @property
    def max_concurrency(self) -> int:
        """How many generations the chat's model runs at once (its batch slots); 0 with no model."""
        r = self._resident
        return r.backend.max_concurrency if r else 0

    def slots_of(self, model: str | None) -> int:
        """How many generations ``model`` runs at once: the chat's model's slots, or for a pool model
        the slots it is loaded with (the server's --parallel)."""
        if not self.pooled(model):
            return self.max_concurrency
        return self.pool.find(model).spec.parallel

    def _held(self, capability: str | None, what: str) -> _Resident:
        with self._swap:
            r = self._resident
        if r is None:
            raise NoModelLoaded()
        if capability is not None:
            self.registry.require(r.spec.backend, capability, what)
        return r

    @contextlib.contextmanager
    def _using(self, model: str | None, capability: str | None, what: str) -> Iterator[_Resident]:
        """The chat's model, or the pool's ``model`` pinned (not evicted) while the block runs."""
        if not self.pooled(model):
            yield self._held(capability, what)
            return
        r = self.pool.acquire(model)
        try:
            if capability is not None:
                self.registry.require(r.spec.backend, capability, what)
            yield r
        finally:
            self.pool.unpin(r)

    def tokenize(self, text: str, model: str | None = None) -> list[int]:
        """The chat model's (or the pool's ``model``'s) tokens for ``text`` (BOS added as the model says)."""
        with self._using(model, "tokenize", "tokenize text") as r:
            return r.backend.tokenize(text)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        r = self._held("tokenize", "detokenize tokens")
        return r.backend.detokenize(token_ids)

    def embed(self, texts: Sequence[str], cancel: threading.Event | None = None, endpoint: str = "embeddings",
              t0: float | None = None, client: str | None = None, model: str | None = None) -> list[list[float]]:
        """One embedding per text from the chat's model ("embeddings" feature), like a generation: in
        one of its slots (arrival order, shared with chats), timed and recorded (/metrics, the request
        log: ``prompt_tokens`` counts the tokens embedded, ``finish_reason`` says "cancelled" when it
        stopped early). ``cancel`` (a client gone), an unload or a shutdown stops it between inputs;
        then it raises instead of returning a partial list."""
        cancel = cancel or threading.Event()
        texts = list(texts)
        with self._using(model, None, "") as r:
            cls = type(r.backend)
            if "embeddings" not in cls.features:
                raise InvalidRequest(f"The {cls.name} backend does not make embeddings.", "input")
            with r.idle:
                if r.closed:
                    raise NoModelLoaded("That model was unloaded.")
                r.active.add(cancel)  # an unload or shutdown sets it
        timer = self.metrics.start(endpoint, r.info.name, r.info.quantization, t0, client, None)
        vectors: list[list[float]] = []
        acquired = False

        def acquire() -> bool:
            nonlocal acquired
            acquired = r.slots.acquire(cancel)
            return acquired

        def progress() -> Iterator[TextDelta]:
            embedded = 0

            def one_done(tokens: int) -> None:
                nonlocal embedded
                embedded += tokens
                timer.chunk(TextDelta("", prompt_tokens=embedded))

            vectors.extend(r.backend.embed(texts, cancel, one_done))
            yield TextDelta("", finish_reason="stop" if len(vectors) == len(texts) else "cancelled",
                            prompt_tokens=embedded)

        try:
            for _ in self.metrics.timed(timer, progress, acquire):
                pass
        finally:
            _leave(r, cancel, acquired)
        if len(vectors) < len(texts):
            if r.closed:
                raise NoModelLoaded("That model was unloaded.")
            raise Cancelled("The embeddings request was cancelled before it finished.")
        return vectors

    def count_prompt_tokens(self, request: ChatRequest) -> int:
        """How many tokens ``request``'s prompt takes on the chat's model (chat template applied); the
        backend's InvalidRequest when it cannot count, NoModelLoaded when nothing is loaded."""
        r = self._resident
        if r is None:
            raise NoModelLoaded()
        return r.backend.count_prompt_tokens(request)

    def context_length(self) -> int:
        """The chat model's context per conversation in tokens (0 when nothing is loaded)."""
        r = self._resident
        return r.info.context_length if r else 0

    def generate(self, request: ChatRequest, endpoint: str = "chat", t0: float | None = None) -> tuple[str, dict]:
        """Non-streamed convenience: full text and the request's stats."""
        gen = self.stream(request, threading.Event(), endpoint, t0)
        text = "".join(delta.text for delta in gen)
        return text, gen.stats.as_dict()


def describe_spec(spec: ModelSpec) -> str:
    """What a load loads, for people: the model, from where, with which engine at which quantization
    ("embedded (the built-in SmolLM2-135M) · llamacpp · Q4_K_M")."""
    source = (spec.source or "").strip()
    if spec.backend == "remote":
        where = f"{spec.served_name or source or 'the engine'} on the remote engine {spec.api_base or '(the server default)'}"
    elif source == sources.EMBEDDED_ALIAS:
        where = "embedded (the built-in SmolLM2-135M)"
    elif sources.looks_like_repo_id(source):
        where = f"{source} from the Hugging Face Hub" + (f" (file {spec.gguf_file})" if spec.gguf_file else "")
    else:
        where = f"{Path(source).name} from {Path(source).parent}"
    quant = spec.quantization or "the backend's default quantization"
    return f"{where} · {spec.backend} · {quant}"


def _leave(r: _Resident, cancel: threading.Event, acquired: bool) -> None:
    """A request done on ``r``: its slot back (if it got one), forgotten as running and as cut, and an
    unload or load waiting for ``r`` to go idle woken."""
    if acquired:
        r.slots.release()
    with r.idle:
        r.active.discard(cancel)
        r.cut.discard(cancel)
        r.idle.notify_all()
    if r.on_idle is not None:
        r.on_idle()


def _cut_message(r: _Resident) -> str:
    return (f"{r.info.name} was unloaded while this reply was running: the reply was cut short. "
            "Send the request again (it goes to the model loaded now).")


class Lease:
    """A model the lab holds beside the chat's (its own, or a pool model borrowed by name). Its generations are timed and slotted like chat ones
    (``endpoint`` labels them in /metrics and the request log)."""

    def __init__(self, manager: ModelManager, resident: _Resident,
                 on_close: Callable[[_Resident], None] | None = None):
        """``on_close``: what closing does instead of unloading (a borrowed pool model: unpin it)."""
        self._manager = manager
        self._r = resident
        self._on_close = on_close
        self._closed = False

    @property
    def info(self) -> LoadedModel:
        return self._r.info

    @property
    def spec(self) -> ModelSpec:
        return self._r.spec

    def stream(self, request: ChatRequest, cancel: threading.Event, endpoint: str = "lab",
               t0: float | None = None) -> Generation:
        return self._manager._generation(self._r, request, cancel, endpoint, t0, None)

    def tokenize(self, text: str) -> list[int]:
        self._manager.registry.require(self._r.spec.backend, "tokenize", "tokenize text")
        return self._r.backend.tokenize(text)

    def logits(self, token_ids) -> Any:
        self._manager.registry.require(self._r.spec.backend, "logits", "give logits (the quality meter needs them)")
        return self._r.backend.logits(token_ids)

    def detokenize(self, token_ids) -> str:
        self._manager.registry.require(self._r.spec.backend, "tokenize", "detokenize tokens")
        return self._r.backend.detokenize(token_ids)

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """``request``'s prompt as the model reads it (chat template applied), as token ids."""
        self._manager.registry.require(self._r.spec.backend, "tokenize", "render a prompt to tokens")
        return self._r.backend.prompt_ids(request)

    @property
    def name(self) -> str:
        """The name it serves under (a pool model's name in /v1/models)."""
        return self._r.pool_name or self._r.info.name

    def close(self) -> None:
        if self._on_close is None:
            self._manager._close_lease(self._r)
        elif not self._closed:  # a borrowed model is unpinned once
            self._closed = True
            self._on_close(self._r)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Generation:
    """A running generation: iterate it for TextDeltas; ``stats`` fills in as it goes and is final
    once iteration ends. Closing it (or dropping it) cancels the generation."""

    def __init__(self, deltas: Iterator[TextDelta], stats: Any):
        self._deltas = deltas
        self.stats = stats

    def __iter__(self) -> Iterator[TextDelta]:
        return self._deltas

    def close(self) -> None:
        self._deltas.close()
