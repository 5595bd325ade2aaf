"""The model pool: every model the server can serve, addressable by a name, loaded on demand.

``Catalogue`` says which names exist: the GGUF files and checkpoint folders under ``--models-dir``
(read afresh at each look-up, so a file added or deleted is seen at once), ``embedded``, and the
model repos in the Hugging Face cache by their repo id (read at most every ``HUB_TTL_S``). A name is
only ever looked up in that list, never joined to a path, so no name can reach a file outside the
folder (a symbolic link pointing out of it is left out of the list too).

``ModelPool`` keeps the resident ones beside the chat's model (the one ``--model`` or /load_model
loaded, which the pool never evicts): a request naming a model pins it (``acquire``) until its
generation is registered as running, and a model with running or queued requests is never evicted.
``--models-max N`` bounds the models the pool loads (least recently used evicted first; when every
one is busy a load waits up to ``wait_s`` for one to go idle, then is refused with a 503 and
Retry-After); ``--keep-alive`` unloads a model idle that long; ``--no-models-autoload`` refuses a
request for a model not resident, naming it and saying how to load it. A failing load records its
error for the listing and leaves every resident model serving.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backends.base import LoadedModel, ModelSpec, Progress, _no_progress
from backends.errors import BackendError, InvalidRequest, ModelNotFound, ModelNotResident, OutOfMemory, PoolFull
from backends.files import hub_cache
from backends.files.gguf import check_gguf
from backends.files.sources import EMBEDDED_ALIAS, inside, is_projector

if TYPE_CHECKING:
    from backends.manager import ModelManager, _Resident

log = logging.getLogger("quantlab.pool")

HUB_TTL_S = 10.0  # how often the Hugging Face cache is scanned again for the listing
POOL_WAIT_S = 120.0  # how long a load waits for a busy model to go idle when the pool is full
MAX_NAME_CHARS = 512
_SPLIT_PART = re.compile(r"-(\d{5})-of-\d{5}\.gguf$")

# the states a name is listed with (llama-server's router says "failed" where we say "error")
LOADED, LOADING, UNLOADED, ERROR = "loaded", "loading", "unloaded", "error"


@dataclass(frozen=True)
class Entry:
    """A servable model: its name and how it is loaded."""

    name: str
    spec: ModelSpec
    kind: str  # "gguf", "checkpoint", "embedded", "hub" (a Hugging Face cache repo), or "variant" (a quantization the lab makes: ``model@Q8_0``)


class Catalogue:
    """The names under ``models_dir`` (plus ``embedded``), each with the spec it loads with: the
    server's own load options (``base_spec``) with that file or folder as the source."""

    def __init__(self, models_dir: Path, base_spec: ModelSpec, hub: bool = False):
        """``hub``: serve the Hugging Face cache's model repos too (not with --listen: there local
        models must be inside --models-dir)."""
        self.models_dir = Path(models_dir).expanduser().resolve()
        self.base_spec = base_spec
        self.hub = hub
        self._hub_read: tuple[float, list[tuple[str, str]]] = (float("-inf"), [])

    def _hub_repos(self) -> list[tuple[str, str]]:
        """The Hub cache's servable repos, read again when the last read is ``HUB_TTL_S`` old."""
        if not self.hub:
            return []
        at, repos = self._hub_read
        if time.monotonic() - at >= HUB_TTL_S:
            try:
                repos = hub_cache.servable_repos()
            except Exception as exc:  # an unreadable cache lists nothing from it, and says why in the log
                log.warning("model pool: the Hugging Face cache could not be read (%s)", type(exc).__name__)
                repos = []
            self._hub_read = (time.monotonic(), repos)
        return repos

    def _spec(self, name: str, source: str, backend: str) -> ModelSpec:
        quant = self.base_spec.quantization if backend == self.base_spec.backend else None
        return self.base_spec.with_(source=source, backend=backend, quantization=quant, gguf_file=None,
                                    api_base=None, api_key=None, served_name=name)

    def entries(self) -> list[Entry]:
        """Every servable model, sorted by name: ``embedded``, then each ``*.gguf`` file at the top of
        the folder (named without ``.gguf``), each folder holding GGUF files (``folder/file``) and each
        checkpoint folder (one with a ``config.json``, named as the folder, loaded with transformers)."""
        found = [Entry(EMBEDDED_ALIAS, self._spec(EMBEDDED_ALIAS, EMBEDDED_ALIAS, "llamacpp"), "embedded")]
        root = self.models_dir
        if not root.is_dir():
            return found + self._hub_entries({EMBEDDED_ALIAS})
        for path in sorted(root.iterdir()):
            if path.name.startswith(".") or not inside(path.resolve(), root):
                continue
            if path.is_file() and path.suffix.lower() == ".gguf" and not _is_extra_part(path.name):
                found.append(Entry(path.stem, self._spec(path.stem, str(path.resolve()), "llamacpp"), "gguf"))
            elif path.is_dir() and (path / "config.json").is_file():
                found.append(Entry(path.name, self._spec(path.name, str(path.resolve()), "transformers"), "checkpoint"))
            elif path.is_dir():
                for f in sorted(path.glob("*.gguf")):
                    if f.is_file() and inside(f.resolve(), root) and not _is_extra_part(f.name):
                        name = f"{path.name}/{f.stem}"
                        found.append(Entry(name, self._spec(name, str(f.resolve()), "llamacpp"), "gguf"))
        return found + self._hub_entries({e.name for e in found})

    def _hub_entries(self, taken: set[str]) -> list[Entry]:
        return [Entry(repo, self._spec(repo, repo, backend), "hub") for repo, backend in self._hub_repos()
                if repo not in taken]

    def find(self, name: str) -> Entry:
        """The entry called ``name`` (``a.gguf`` finds ``a`` too); ModelNotFound naming what exists."""
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
            raise InvalidRequest("model: name a model (GET /v1/models lists them).", "model")
        wanted = name.strip()
        entries = self.entries()
        for e in entries:
            if wanted in (e.name, e.name + ".gguf"):
                return e
        names = ", ".join(e.name for e in entries[:20]) + (", ..." if len(entries) > 20 else "")
        raise ModelNotFound(f"The model '{_shown(wanted)}' does not exist on this server (it serves the models in "
                            f"its --models-dir, the Hugging Face cache and 'embedded': {names}).")


def _is_extra_part(filename: str) -> bool:
    """The second and later files of a split GGUF (``-00002-of-00003.gguf``) and multimodal projectors
    are not models of their own."""
    low = filename.lower()
    part = _SPLIT_PART.search(low)
    return is_projector(low) or (part is not None and int(part.group(1)) != 1)


def _not_resident(name: str) -> ModelNotResident:
    return ModelNotResident(f"The model '{name}' is not loaded and this server loads models only when asked to "
                            f"(--no-models-autoload): load it first with POST /models/load {{\"model\": \"{name}\"}}.")


def _shown(name: str) -> str:
    name = name if len(name) <= 80 else name[:77] + "..."
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


class ModelPool:
    """The models loaded by name (beside the chat's), their leases, limits and idle unloads."""

    def __init__(self, manager: ModelManager, catalogue: Catalogue, *, models_max: int = 0, autoload: bool = True,
                 keep_alive_s: float = 0.0, wait_s: float = POOL_WAIT_S):
        self._m = manager
        self.catalogue = catalogue
        self.models_max = models_max  # 0: no limit
        self.autoload = autoload
        self.keep_alive_s = keep_alive_s  # 0: never unloaded for being idle
        self.wait_s = wait_s
        # the server's memory check (weights + KV + overhead estimated against --memory-budget-mib and
        # the free memory): fits(spec, models_to_free) raises OutOfMemory when the load would not fit
        self.fits: Callable[[ModelSpec, list[LoadedModel]], None] | None = None
        self._named: dict[str, _Resident] = {}  # guarded by the manager's _swap lock
        self._loading: dict[str, ModelSpec] = {}
        self._errors: dict[str, str] = {}
        self._load_lock = threading.Lock()  # one pool load at a time (each needs its room first)
        self._room = threading.Condition(manager._swap)  # notified whenever a pool model goes idle
        # names beyond the catalogue's: the lab's variants (``optimization.lab``: ``embedded@Q8_0``). A
        # resolver turns a name into an Entry or returns None; each variant made is remembered (listed)
        self.resolvers: list[Callable[[str], Entry | None]] = []
        self._made: dict[str, Entry] = {}
        self.events: Counter[tuple[str, str]] = Counter()  # (name, load|load_failed|evicted|idle_unload|unload)
        self.listeners: list[Callable[[str, str, str], None]] = []  # (name, event, detail): the request log
        self._keep: dict[str, float] = {}  # a request's own keep-alive per name (Ollama's keep_alive)
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        if keep_alive_s > 0:
            self._start_reaper()

    def _start_reaper(self) -> None:
        with self._m._swap:
            if self._reaper is not None:
                return
            self._reaper = threading.Thread(target=self._reap, name="pool-keep-alive", daemon=True)
        self._reaper.start()

    def keep_alive(self, name: str, seconds: float) -> None:
        """How long the model ``name`` stays loaded once idle, from its next request on (Ollama's
        per-request ``keep_alive``: the latest request's wins; 0 = unloaded as soon as its requests
        end, ``inf`` = until evicted), in place of --keep-alive."""
        entry = self.find(name)
        with self._m._swap:
            self._keep[entry.name] = seconds
        self._start_reaper()
        self._notify()

    # --- residents -------------------------------------------------------------------------------

    def residents(self) -> list[_Resident]:
        with self._m._swap:
            return list(self._named.values())

    def _resident_for(self, entry: Entry) -> _Resident | None:
        """The resident serving ``entry`` (the chat's model when it is that same file; a variant is
        always its own model), under _swap."""
        chat = self._m._resident
        if (chat is not None and entry.kind != "variant" and chat.spec.source == entry.spec.source
                and chat.spec.backend == entry.spec.backend):
            return chat
        return self._named.get(entry.name)

    def find(self, name: str) -> Entry:
        """The entry called ``name``: the catalogue's, else a variant (made before, or one a resolver
        makes of a name such as ``embedded@Q8_0``); the catalogue's ModelNotFound otherwise."""
        try:
            return self.catalogue.find(name)
        except ModelNotFound:
            wanted = name.strip()
            if wanted in self._made:
                return self._made[wanted]
            for resolve in self.resolvers:
                entry = resolve(wanted)
                if entry is not None:
                    return self.remember(entry)
            raise

    def remember(self, entry: Entry) -> Entry:
        """Keep ``entry`` (a variant) servable and listed under its name from now on."""
        with self._m._swap:
            return self._made.setdefault(entry.name, entry)

    def variants(self) -> list[str]:
        """The names of the variants made so far (listed after the catalogue's names)."""
        with self._m._swap:
            return sorted(self._made)

    def _pin(self, entry: Entry) -> _Resident | None:
        with self._m._swap:
            r = self._resident_for(entry)
            if r is not None:
                r.pins += 1
                r.last_used = time.monotonic()
            return r

    def servable_entry(self, name: str) -> Entry:
        """The entry called ``name`` when a request may use it now: ModelNotFound for an unknown name,
        ModelNotResident (naming it and how to load it) for one not loaded under --no-models-autoload."""
        entry = self.find(name)
        if not self.autoload:
            with self._m._swap:
                resident = self._resident_for(entry) is not None
            if not resident:
                raise _not_resident(entry.name)
        return entry

    def acquire(self, name: str, *, autoload: bool | None = None, progress: Progress = _no_progress) -> _Resident:
        """The resident model called ``name``, pinned: it is not evicted until ``unpin``. Loads it
        first when it is not resident (waiting for room under --models-max)."""
        entry = self.find(name)
        r = self._pin(entry)
        if r is not None:
            return r
        if not (self.autoload if autoload is None else autoload):
            raise _not_resident(entry.name)
        with self._load_lock:
            r = self._pin(entry)  # loaded by the request queued before this one
            if r is not None:
                return r
            self._loading[entry.name] = entry.spec  # listed as loading from here (waiting for room too)
            self._errors.pop(entry.name, None)
            try:
                if entry.kind == "gguf":  # a file that is no GGUF is refused before any model is evicted for it
                    check_gguf(Path(entry.spec.source))
                self._make_room()
                spec = self._m.validate(entry.spec)
                self._make_fit(spec)
                r = self._m._open(spec, progress)
            except PoolFull:  # no room yet: the model is as it was (unloaded), not failed
                raise
            except BackendError as exc:
                self._errors[entry.name] = str(exc)
                self._event(entry.name, "load_failed", str(exc))
                raise
            except Exception as exc:
                self._errors[entry.name] = f"Internal error ({type(exc).__name__})."
                self._event(entry.name, "load_failed", self._errors[entry.name])
                raise
            finally:
                self._loading.pop(entry.name, None)
            r.pool_name, r.pins, r.last_used, r.on_idle = entry.name, 1, time.monotonic(), self._notify
            with self._m._swap:
                self._named[entry.name] = r
            self._event(entry.name, "load", f"{r.info.load_seconds:.1f} s")
            return r

    def _event(self, name: str, event: str, detail: str = "") -> None:
        """Count a load, failed load, eviction or unload (/metrics) and log it."""
        self.events[(name, event)] += 1
        log.info("model pool: %s %s%s", event.replace("_", " "), name, f" ({detail})" if detail else "")
        for listener in self.listeners:
            listener(name, event, detail)

    def unpin(self, r: _Resident) -> None:
        with self._room:
            r.pins -= 1
            r.last_used = time.monotonic()
            self._room.notify_all()

    def _notify(self) -> None:
        with self._room:
            self._room.notify_all()

    def _evictable(self) -> list[_Resident]:
        return [r for r in self._named.values() if not r.active and r.pins == 0]

    def _make_room(self) -> None:
        """Evict least recently used idle models until one more fits under --models-max; wait for a
        busy one to go idle (up to ``wait_s``), then refuse with PoolFull."""
        if self.models_max <= 0:
            return
        deadline = time.monotonic() + self.wait_s
        while True:
            with self._room:
                while len(self._named) >= self.models_max and not self._evictable():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        busy = ", ".join(sorted(self._named))
                        raise PoolFull(f"All {self.models_max} model place(s) (--models-max) are taken by models running "
                                       f"requests ({busy}); try again when one of them is idle.", retry_after=5)
                    self._room.wait(min(left, 0.5))
                if len(self._named) < self.models_max:
                    return
                victim = min(self._evictable(), key=lambda r: r.last_used)
                del self._named[victim.pool_name]
                self._m._retiring.add(victim)
            self._event(victim.pool_name, "evicted", f"--models-max {self.models_max}, least recently used")
            self._m._retire(victim)

    def _make_fit(self, spec: ModelSpec) -> None:
        """With a memory check: refuse a load that would not fit even with every idle pool model
        unloaded (then nothing is evicted), else evict the least recently used idle ones until it fits."""
        if self.fits is None:
            return
        with self._m._swap:
            idle = [r.info for r in self._evictable()]
        self.fits(spec, idle)  # OutOfMemory: not even with all of them gone
        while True:
            try:
                self.fits(spec, [])
                return
            except OutOfMemory:
                with self._room:
                    idle_now = self._evictable()
                    if not idle_now:
                        raise
                    victim = min(idle_now, key=lambda r: r.last_used)
                    del self._named[victim.pool_name]
                    self._m._retiring.add(victim)
                self._event(victim.pool_name, "evicted", "memory budget, least recently used")
                self._m._retire(victim)

    def unload(self, name: str) -> bool:
        """Unload the model ``name`` now (replies running on it end with ModelUnloaded): the pool's,
        or the chat's model when ``name`` is its file. InvalidRequest when it is not loaded."""
        entry = self.find(name)
        with self._m._swap:
            r = self._named.pop(entry.name, None)
            if r is not None:
                self._m._retiring.add(r)
            chat = r is None and self._resident_for(entry) is not None
        if r is None and not chat:
            raise InvalidRequest(f"The model '{entry.name}' is not loaded.", "model")
        self._event(entry.name, "unload")
        if chat:
            self._m.unload()
        else:
            self._m._retire(r)
        return True

    def _kept_s(self, name: str) -> float:
        """How long ``name`` stays loaded idle: a request's keep_alive, else --keep-alive (0: forever)."""
        if name in self._keep:
            return self._keep[name]
        return self.keep_alive_s if self.keep_alive_s > 0 else float("inf")

    def _reap(self) -> None:
        """Unload pool models idle longer than their keep-alive (--keep-alive, or a request's own)."""
        interval = max(0.05, min(self.keep_alive_s / 4, 5.0)) if self.keep_alive_s > 0 else 0.25
        while not self._stop.wait(min(interval, 0.25) if self._keep else interval):
            now = time.monotonic()
            with self._m._swap:
                idle = [r for r in self._evictable() if now - r.last_used >= self._kept_s(r.pool_name)]
                for r in idle:
                    del self._named[r.pool_name]
                    self._m._retiring.add(r)
            for r in idle:
                self._event(r.pool_name, "idle_unload", f"idle {self._kept_s(r.pool_name):g} s")
                self._m._retire(r)

    def close(self) -> None:
        self._stop.set()
        with self._m._swap:
            held = list(self._named.values())
            self._named.clear()
            self._m._retiring.update(held)
        for r in held:
            self._m._retire(r)

    # --- listing ---------------------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """Every servable name with its status (loaded, loading, unloaded, error), the resident's
        LoadedModel (``info``, for its memory) and the last load error."""
        rows = []
        with self._m._swap:
            made = [self._made[n] for n in sorted(self._made)]
        for entry in self.catalogue.entries() + made:
            with self._m._swap:
                r = self._resident_for(entry)
                running = len(r.active) if r is not None else 0
            if r is not None:
                status = LOADED
            elif entry.name in self._loading:
                status = LOADING
            elif entry.name in self._errors:
                status = ERROR
            else:
                status = UNLOADED
            rows.append({"name": entry.name, "kind": entry.kind, "backend": entry.spec.backend, "status": status,
                         "info": r.info if r is not None else None, "running": running,
                         "chat_model": r is not None and r is self._m._resident,
                         "error": self._errors.get(entry.name) if status == ERROR else None})
        return rows

    def servable(self) -> bool:
        """Whether a request naming a model can be answered without an explicit load first."""
        with self._m._swap:
            return bool(self._named) or self.autoload
