"""The operations the UI and the Gradio API call, primitives in and primitives out: chat (the shared
ChatService), loading models, the caches, the Monitor's figures and the quantization lab.

Typed BackendErrors go up unchanged; ``ui/edge.py`` turns them into ``gr.Error``. Nothing here
imports gradio, torch or llama_cpp.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from backends.files import hub_cache, sources
from backends.base import LoadedModel, Message, ModelSpec, SamplingParams
from backends.errors import BackendError, InvalidRequest
from backends.manager import ModelManager
from backends.files.sources import EMBEDDED_ALIAS, default_cache_dir, embedded_model_path
from monitoring import stats as monitor_stats
from monitoring.memory import MemoryMonitor
from monitoring.model_memory import model_memory
from optimization import estimates, measurements
from optimization.lab import DEFAULT_REFERENCE, Lab
from serving.attachments import Attachment
from serving.chat_service import ChatService
from serving.images import decode_image
from serving.pieces import ReplyDelta, text_so_far
from serving.requests import as_int, as_number, as_text, chat_request, loader_options, text_of


log = logging.getLogger(__name__)


class Services:
    def __init__(self, manager: ModelManager, chat: ChatService, lab: Lab, base_spec: ModelSpec,
                 monitor: MemoryMonitor | None = None, memory_budget_bytes: int = 0):
        """``base_spec``: the server's load options (``ModelSpec.from_settings``); a load from the UI
        or the API overrides the model, backend and quantization. ``memory_budget_bytes``: the most
        the models held may take together (``--memory-budget-mib``; 0 = only the free memory bounds)."""
        self.manager = manager
        self.chat_service = chat
        self.lab = lab
        self.base_spec = base_spec
        self.monitor = monitor
        self.memory_budget_bytes = memory_budget_bytes

    @property
    def registry(self):
        return self.manager.registry

    def chat(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, dict]]:
        """``ChatService.chat`` in Gradio /chat's shape: (reply so far, {}) then (reply, stats)."""
        yield from text_so_far(self.chat_service.chat(*args, **kwargs))

    def chat_pieces(self, *args: Any, **kwargs: Any) -> Iterator[ReplyDelta]:
        """``ChatService.chat``: the reply's pieces (thinking and answer apart), the last with the stats."""
        return self.chat_service.chat(*args, **kwargs)

    def complete(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, dict]]:
        """``ChatService.complete`` in Gradio /complete's shape: (continuation so far, {}) then
        (continuation, stats)."""
        yield from text_so_far(self.chat_service.complete(*args, **kwargs))

    def complete_pieces(self, *args: Any, **kwargs: Any) -> Iterator[ReplyDelta]:
        """``ChatService.complete``: the continuation's pieces, the last with the stats."""
        return self.chat_service.complete(*args, **kwargs)

    # --- models ----------------------------------------------------------------------------------

    def load_steps(self, model: str, backend: str, quantization: str | None,
                   **options: Any) -> Iterator[tuple[float, str]]:
        """Yield (fraction, status line) while loading; the last line says what was loaded."""
        options = loader_options(**options)
        spec = self.manager.validate(self.base_spec.with_(
            source=self.pool_source(as_text(model, "model").strip()), backend=as_text(backend, "backend").strip(),
            quantization=as_text(quantization, "quantization") or None, **options))
        self.check_memory(spec)  # before anything is touched: a refused load leaves the old model serving
        updates: queue.Queue = queue.Queue()
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["info"] = self.manager.load(spec, lambda f, text: updates.put((f, text)))
            except BaseException as exc:  # re-raised below, on the caller's thread
                result["error"] = exc
            finally:
                updates.put(None)

        threading.Thread(target=run, name="load-model", daemon=True).start()
        yield 0.0, f"Loading {spec.source} ({spec.backend}, {spec.quantization})…"
        while (item := updates.get()) is not None:
            fraction, text = item
            yield fraction, text
        if "error" in result:
            raise result["error"]
        info = result["info"]
        yield 1.0, (f"Loaded {info.name} · {info.backend} · {info.quantization} · "
                    f"{model_memory(info)['total_mib']:,.1f} MiB · {info.load_seconds:.1f} s · {info.device}")

    def check_memory(self, spec: ModelSpec, freed: Sequence[LoadedModel] = ()) -> None:
        """OutOfMemory naming the estimate, the free memory and what to lower when ``spec`` cannot fit:
        weights + KV cache (n_ctx x parallel) + overhead against the free RAM (the GPU's free memory
        when the layers go there) or the budget less the models held (less ``freed``, those the pool
        would unload to make room). A source not on this machine
        yet (a Hub repo still to download) or without readable metadata is not estimated."""
        if "files" not in self.registry.get(spec.backend).capabilities:
            return  # a remote engine: its memory is not ours
        path = local_model_file(spec, self.manager.allowed_dir)
        if path is None:
            return
        est = estimates.estimate_load(path, spec.quantization, spec.n_ctx, spec.parallel, spec.cache_type)
        if est is None:
            return
        on_gpu = spec.n_gpu_layers != 0 and (spec.device_map or "").strip().lower() != "cpu"
        held = sum(model_memory(info)["total_bytes"] for info in self.manager.held_models())
        held -= sum(model_memory(info)["total_bytes"] for info in freed)  # models the pool would unload first
        estimates.check_load_fits(est, on_gpu=on_gpu, monitor=self.monitor,
                                  all_gpus=(spec.device_map or "").strip().lower() == "auto",
                                  budget_bytes=self.memory_budget_bytes, held_bytes=held)

    def pool_source(self, model: str) -> str:
        """``model`` itself, or with a pool (--models-dir) the file or folder of the pool's model of
        that name: /load_model may name a pool model to make it the chat's model."""
        pool = self.manager.pool
        if pool is None or model == EMBEDDED_ALIAS:
            return model
        found = [e for e in pool.catalogue.entries() if model in (e.name, e.name + ".gguf")]
        return found[0].spec.source if found else model

    def unload_model(self, model: str = "") -> str:
        """Unload the chat's model, or with a pool the model named ``model`` (its name in /v1/models)."""
        model = as_text(model, "model").strip()
        if model and self.manager.pooled(model):
            self.manager.pool.unload(model)
            return f"Unloaded {model}."
        info = self.manager.unload()
        return f"Unloaded {info.name}." if info else "No model was loaded."

    def load_by_name(self, name: str) -> str:
        """Load the pool's model ``name`` (its name in /v1/models) beside the chat's, as POST /models/load does."""
        name = as_text(name, "model").strip()
        pool = self.manager.pool
        if pool is None:
            raise InvalidRequest("This server serves one model: start it with --models-dir to load models by name.",
                                 "model")
        if not name:
            raise InvalidRequest("Choose a model to load (GET /v1/models lists them).", "model")
        self.manager.borrow(name).close()
        return f"Loaded {name}."

    def model_status(self) -> dict:
        """What is loaded (with its memory and provenance, as /stats shows them), loading, last error."""
        status = self.manager.status()
        cur = self.manager.current
        if cur is not None and status.get("model"):
            status["model"] = monitor_stats.model_view(cur)
        status["lab_models"] = [monitor_stats.model_view(i) for i in self.manager.leased()]
        status["pool_models"] = [monitor_stats.model_view(i) for i in self.manager.pool_models()]
        status["memory_account"] = monitor_stats.memory_account(self.manager, self.monitor)
        return status

    def stats(self, last: Any = 50) -> dict:
        """Memory (process, system, GPUs, the models held) and the latency of the last requests."""
        n = as_int(last, "last")
        if not 1 <= n <= 1000:
            raise InvalidRequest(f"last must be between 1 and 1000, got {n}.", "last")
        return monitor_stats.stats(self.manager, self.monitor, n)

    def quantizations(self, backend: str) -> list[str]:
        return self.registry.menu(backend)

    def local_models(self, models_dir: Path | None = None) -> list[str]:
        """Models that load without a download: the embedded one, GGUF files and transformers folders
        in ``models_dir``, and the Hub repos already in the cache."""
        found = [EMBEDDED_ALIAS]
        base = Path(models_dir).expanduser().resolve() if models_dir else None
        if base is not None and base.is_dir():  # absolute: a relative name would be taken inside --models-dir again
            found += [str(path) for path in sorted(base.rglob("*.gguf"))[:200]]
            found += [str(config.parent) for config in sorted(base.rglob("config.json"))[:200]]
        for item in hub_cache.list_cached(self._cache_dir()):
            if item["kind"].startswith("hub") and item["repo_id"] not in found:
                found.append(item["repo_id"])
        return found

    # --- downloaded and derived models -----------------------------------------------------------

    def cached_models(self) -> list[dict]:
        """Models in the Hugging Face cache and this app's derived models (GGUF variants, derived
        checkpoints), most recently used first."""
        return hub_cache.list_cached(self._cache_dir())

    def delete_cached(self, item_id: str) -> str:
        """Delete one cached model by its id (from ``cached_models``). Refuses the folder of any model
        held (the chat's and the lab's) and deletes nothing while a model is loading."""
        if self.manager.loading is not None:
            raise InvalidRequest("A model is loading: delete cached models once it has finished.", "item_id")
        item = hub_cache.delete_cached(as_text(item_id, "item_id"), self._cache_dir(),
                                       in_use=self.manager.in_use_sources())
        return f"Deleted {item['id']} ({item['size_bytes'] / 2**20:.1f} MiB freed)."

    def convert_to_gguf(self, model: str, quantizations: Any = None) -> Iterator[tuple[float, str, list[dict]]]:
        """Convert a checkpoint folder or Hub repo id to GGUF F16 with llama.cpp's converter, then make
        each of ``quantizations`` from it. Yields (fraction, status line, []), then (1.0, summary, the new
        cache rows). Closing the generator (client gone, Stop) ends the conversion and leaves no file."""
        from backends.files import hf_to_gguf

        source = as_text(model, "model").strip()
        quants = parse_quantizations(quantizations)
        updates: queue.Queue = queue.Queue()
        result: dict[str, Any] = {}
        cancel = threading.Event()

        def run() -> None:
            try:
                result["paths"] = hf_to_gguf.convert_source(
                    source, self._cache_dir(), quants, allowed_dir=self.manager.allowed_dir,
                    progress=lambda f, text: updates.put((f, text)), cancel=cancel)
            except BaseException as exc:  # re-raised below, on the caller's thread
                result["error"] = exc
            finally:
                updates.put(None)

        worker = threading.Thread(target=run, name="convert-gguf", daemon=True)
        worker.start()
        try:
            yield 0.0, f"Converting {source} to GGUF (F16{''.join(', ' + q for q in quants if q != 'F16')})…", []
            while (item := updates.get()) is not None:
                yield min(item[0], 0.99), item[1], []
        finally:
            cancel.set()  # no-op when done; else the converter subprocess is killed and its file removed
        if "error" in result:
            raise result["error"]
        paths = result["paths"]
        made = {str(p) for p in paths}
        rows = [i for i in self.cached_models() if i.get("load", {}).get("model") in made]
        rows.sort(key=lambda i: [str(p) for p in paths].index(i["load"]["model"]))
        yield 1.0, f"Made {', '.join(p.name for p in paths)} in {paths[0].parent}", rows

    def _cache_dir(self) -> Path:
        return self.manager.cache_dir or default_cache_dir()

    # --- quantization lab ------------------------------------------------------------------------

    def compare(self, prompt: str, variants: Any, model: str = "embedded", max_new_tokens: Any = 128,
                temperature: Any = 0.0, seed: Any = 0, image: Attachment | None = None) -> Iterator[list[dict]]:
        """Yield every variant's {variant, text, done, stats, footprint_mib} as they stream; ``image``: a
        picture (already read) every variant sees with the prompt."""
        params = SamplingParams(max_new_tokens=as_int(max_new_tokens, "max_new_tokens"),
                                temperature=as_number(temperature, "temperature"), top_p=1.0, top_k=0,
                                seed=None if seed is None else as_int(seed, "seed"))
        prompt = text_of(prompt)
        if not prompt.strip():
            raise InvalidRequest("The prompt is empty: type something to compare.", "prompt")
        # the chat's checks and limits (valid text, --max-prompt-chars, sampling bounds), once
        limits = self.chat_service.limits
        images = (decode_image(image.data, f"image: {image.name}", limits.images, "image"),) if image else ()
        request = chat_request((Message("user", prompt, images=images),), params, (), limits)
        yield from self.lab.compare(as_text(model, "model").strip() or "embedded", variants, prompt, request.params,
                                    images=images)

    def release_lab(self) -> str:
        n = self.lab.release()
        return f"Unloaded {n} compared variant{'s' if n != 1 else ''}." if n else "No compared variant was loaded."

    def evaluate(self, variants: Any, text_path: str | None = None, max_tokens: Any = 1024,
                 model: str = "embedded", reference: str = DEFAULT_REFERENCE, window: Any = 256,
                 scoring: Any = "all", progress=lambda f, m: None, cancel: threading.Event | None = None) -> list[dict]:
        """The lab's evaluation; ``cancel`` (set by Stop or a client gone) stops it between windows."""
        source = as_text(model, "model").strip() or "embedded"
        reference = as_text(reference, "reference") or DEFAULT_REFERENCE
        text_path, scoring = as_text(text_path, "text_path").strip() or None, as_text(scoring, "scoring").strip() or "all"
        rows = self.lab.evaluate(source, variants, reference, text_path, as_int(max_tokens, "max_tokens"),
                                 as_int(window, "window"), progress=progress, scoring=scoring, cancel=cancel)
        rows = [r.as_dict() for r in rows]
        try:  # the fit advisor and the report card read what was measured
            measurements.record(self._cache_dir(), source, rows, reference=reference, text=text_path,
                                max_tokens=as_int(max_tokens, "max_tokens"), window=as_int(window, "window"),
                                scoring=scoring, machine=measurements.machine_info(self.monitor))
        except OSError as exc:
            log.warning("could not keep the evaluation's measurements: %s", exc)
        return rows


def local_model_file(spec: ModelSpec, allowed_dir: Path | None) -> Path | None:
    """The GGUF file or checkpoint folder a validated ``spec`` loads, when it is on this machine now."""
    source = (spec.source or "").strip()
    try:
        if source == EMBEDDED_ALIAS:
            return embedded_model_path()
        if sources.looks_like_repo_id(source, allowed_dir):
            return None
        path = Path(source)
        if path.is_dir() and not (path / "config.json").is_file():
            return sources.find_gguf(path, spec.gguf_file)
        return path if path.exists() else None
    except BackendError:  # the load itself says what is wrong with the source, in its own words
        return None


def parse_quantizations(value: Any) -> list[str]:
    """GGUF types from a list or a comma/space separated string ("" or None = none), upper-cased."""
    if value is None:
        return []
    if not isinstance(value, (str, list, tuple)):
        raise InvalidRequest(f"quantizations must be a list of GGUF types or a comma-separated string, got "
                             f"{type(value).__name__}.", "quantizations")
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    out = []
    for item in items:
        name = as_text(item, "quantizations").strip().upper()
        if name:
            out.append(name)
    return out
