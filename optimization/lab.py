"""The quantization lab: variants of one model across both backends, compared side by side and
measured against a reference.

Every variant has a stable name, ``<model>@<quantization>`` (``embedded@Q8_0``; another backend's
says it, ``embedded@transformers:nf4``; a quantized KV cache too, ``embedded@Q8_0+kv:q8_0``), where
``<model>`` is the pool's name of the source (a ``--models-dir`` name, ``embedded``, a Hub repo id)
or the file's name. With a model pool (``--models-dir``) the variants are pool models: Compare and
Evaluate borrow them by that name (``ModelManager.borrow``), so they are listed in GET /v1/models,
counted in the memory account, evicted by the pool's rules (--models-max, --keep-alive, the memory
budget) and any client may ask for one by name. Without a pool the lab leases its own
(``open_variant``), Compare keeping the last few. Either way the chat's model is never touched; the
generations take the same slots and timing path, so Compare and Evaluate show in the Monitor,
/metrics (endpoint "compare" / "evaluate") and the request log, and the caches never delete a
variant the lab holds. Memory is checked against free RAM/VRAM before any variant is loaded.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from backends.files import gguf, sources
from backends.base import KV_CACHE_TYPES, ChatRequest, Message, ModelSpec, SamplingParams
from backends.errors import BackendError, Cancelled, InvalidRequest, ModelNotFound, OutOfMemory, UnsupportedQuantization
from backends.manager import Lease, ModelManager
from backends.pool import LOADED, Entry
from backends.files.provenance import provenance
from backends.registry import BackendRegistry
from monitoring.memory import MemoryMonitor
from monitoring.model_memory import model_memory
from optimization import quality
from optimization.estimates import BITS_PER_WEIGHT, estimate_model_bytes, fits

LAB_CAPABILITY = "logits"  # a backend the quality meter can score
DEFAULT_REFERENCE = "transformers:fp32"
MAX_COMPARE = 4
COMPARE_CTX = 2048
LAB_CTX = COMPARE_CTX  # every lab variant loads at this context x 1 slot: one memory figure per variant
# Most tokens one evaluation scores (each variant scores them all): 4x the UI's slider, minutes per
# variant on a CPU; a run of 714 s once came from an unbounded max_tokens.
MAX_EVAL_TOKENS = 32_768


KV_CAPABILITY = "kv_cache_type"  # a backend whose KV cache can be quantized (llama.cpp's type_k/type_v)
KV_MARK = "+kv:"
KV_MENU = (("Q8_0", "q8_0"), ("Q8_0", "q4_0"), ("Q4_K_M", "q8_0"), ("Q4_K_M", "q4_0"))  # offered in the menus
NAME_MARK = "@"  # <model>@<variant>: a variant's name in the pool
DEFAULT_VARIANT_BACKEND = "llamacpp"  # its variants are named by quantization alone


@dataclass(frozen=True)
class Variant:
    """``backend:quantization``, optionally ``+kv:TYPE`` (llama.cpp's KV cache type, f16/q8_0/q4_0).
    Without one, the variant takes the server's ``--cache-type`` (f16 by default)."""
    backend: str
    quantization: str
    kv: str | None = None

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.quantization}" + (f"{KV_MARK}{self.kv}" if self.kv else "")

    @classmethod
    def parse(cls, text: str, registry: BackendRegistry) -> Variant:
        raw = (text if isinstance(text, str) else "").strip()
        at = raw.lower().find(KV_MARK)
        head, kv = (raw[:at], raw[at + len(KV_MARK):].strip().lower()) if at >= 0 else (raw, None)
        backend, sep, quant = head.partition(":")
        if not sep or backend not in registry.names() or not registry.supports(backend, LAB_CAPABILITY):
            raise UnsupportedQuantization(
                f"Unknown variant {text!r}: write backend:quantization, e.g. llamacpp:Q8_0 or transformers:nf4 "
                f"(llama.cpp may add a KV cache type: llamacpp:Q8_0{KV_MARK}q8_0).")
        if kv is not None:
            if not registry.supports(backend, KV_CAPABILITY):
                raise UnsupportedQuantization(
                    f"{raw!r}: the {backend} backend has no KV cache type ({KV_MARK} is for llama.cpp variants); "
                    f"write {head} without it.")
            if kv not in KV_CACHE_TYPES:
                raise UnsupportedQuantization(
                    f"Unknown KV cache type {kv!r} in {raw!r}: write {KV_MARK} then one of "
                    f"{', '.join(KV_CACHE_TYPES)}.")
        return cls(backend, registry.normalize(backend, quant), kv)


def variant_menu(registry: BackendRegistry) -> list[str]:
    """Every variant the lab can score, then a few with a quantized KV cache (any other can be typed)."""
    menu = registry.variant_menu(LAB_CAPABILITY)
    kv = [f"{b}:{q}{KV_MARK}{t}" for b in registry.names() if registry.supports(b, KV_CAPABILITY)
          for q, t in KV_MENU if f"{b}:{q}" in menu]
    return menu + kv


def parse_variants(texts, registry: BackendRegistry, at_least: int = 1, at_most: int | None = None) -> list[Variant]:
    if isinstance(texts, str):
        texts = [t for t in texts.split(",") if t.strip()]
    if not isinstance(texts, (list, tuple)):
        raise InvalidRequest("variants must be a list such as [\"llamacpp:Q8_0\", \"transformers:nf4\"].", "variants")
    variants = list(dict.fromkeys(Variant.parse(t, registry) for t in texts))
    if len(variants) < at_least:
        raise InvalidRequest(f"Choose at least {at_least} variant{'s' if at_least > 1 else ''}.", "variants")
    if at_most is not None and len(variants) > at_most:
        raise InvalidRequest(f"Choose at most {at_most} variants.", "variants")
    return variants


def estimate_params(path: Path) -> int:
    """Parameter count of a source, from its files (no load): GGUF size / its bits per weight, or
    the safetensors' bytes / their dtype size."""
    if path.is_file() and path.suffix == ".gguf":
        own = gguf.gguf_file_type(path) or "Q8_0"
        return int(path.stat().st_size * 8 / BITS_PER_WEIGHT.get(own, 8.5))
    weights = list(path.glob("*.safetensors")) if path.is_dir() else []
    if weights:
        return int(sum(w.stat().st_size for w in weights) / 4)  # assume fp32; an over-estimate for bf16
    return 0


class Lab:
    def __init__(self, manager: ModelManager, monitor: MemoryMonitor | None = None, keep: int = MAX_COMPARE,
                 base_spec: ModelSpec | None = None):
        """``base_spec``: the server's load options (threads, GPU layers, trust_remote_code, ...);
        each variant overrides the source, backend and quantization and decodes one sequence."""
        self.manager = manager
        self.monitor = monitor
        self.keep = keep
        self.base_spec = base_spec
        self._pool: OrderedDict[tuple[str, str, int], Lease] = OrderedDict()  # without a model pool only
        self._lock = threading.Lock()
        if manager.pool is not None:  # a client may name a variant the lab has not made yet
            manager.pool.resolvers.append(self.resolve_name)

    @property
    def registry(self) -> BackendRegistry:
        return self.manager.registry

    # --- loading ---------------------------------------------------------------------------------

    def spec(self, source: str, v: Variant, n_ctx: int) -> ModelSpec:
        """No prefix reuse (``prefix_cache=False``): a greedy run gives the same text whatever ran before.
        A ``+kv:`` variant sets the KV cache type; without one the server's own applies, as does its
        flash attention (each evaluation row records the one it was scored with). It serves under its
        name (``variant_name``)."""
        base = self.base_spec or ModelSpec(source=source, backend=v.backend)
        kv = {"cache_type": v.kv} if v.kv else {}
        return base.with_(source=source, backend=v.backend, quantization=v.quantization, n_ctx=n_ctx, parallel=1,
                          served_name=self.variant_name(source, v), prefix_cache=False, gguf_file=None, api_base=None,
                          api_key=None, **kv)

    # --- names -----------------------------------------------------------------------------------

    def model_name(self, source: str) -> str:
        """The ``<model>`` part of a variant's name: the pool's name of ``source`` (a --models-dir
        name, ``embedded``), a Hub repo id as it is, else the file's or folder's name."""
        source = (source or "").strip()
        pool = self.manager.pool
        if pool is not None:
            for entry in pool.catalogue.entries():
                if source in (entry.name, entry.name + ".gguf", entry.spec.source):
                    return entry.name
        if source == sources.EMBEDDED_ALIAS or sources.looks_like_repo_id(source, self.manager.allowed_dir):
            return source
        path = Path(source)
        return path.stem if path.suffix.lower() == ".gguf" else path.name

    def variant_name(self, source: str, v: Variant) -> str:
        """``embedded@Q8_0``, ``embedded@Q8_0+kv:q8_0``, ``embedded@transformers:nf4``: stable, so the
        same variant is one model whoever asks for it (the lab or a client)."""
        label = v.label[len(DEFAULT_VARIANT_BACKEND) + 1:] if v.backend == DEFAULT_VARIANT_BACKEND else v.label
        return f"{self.model_name(source)}{NAME_MARK}{label}"

    def resolve_name(self, name: str) -> Entry | None:
        """The pool entry of a variant name whose ``<model>`` is one of the pool's names (None for
        any other name: the pool says it does not exist)."""
        model, sep, variant = name.rpartition(NAME_MARK)
        if not sep or not model or not variant or self.manager.pool is None:
            return None
        try:
            base = self.manager.pool.catalogue.find(model)
            v = Variant.parse(variant if ":" in variant.partition(KV_MARK)[0] else
                              f"{DEFAULT_VARIANT_BACKEND}:{variant}", self.registry)
        except (ModelNotFound, InvalidRequest, UnsupportedQuantization):
            return None
        return self._entry(base.spec.source, v)

    def source_of(self, source: str) -> str:
        """``source`` as a file or folder: a pool's name (``alpha``) stands for its file."""
        pool = self.manager.pool
        found = [e for e in pool.catalogue.entries() if source in (e.name, e.name + ".gguf")] if pool else []
        return found[0].spec.source if found and found[0].kind != "embedded" else source

    def _entry(self, source: str, v: Variant) -> Entry:
        """The pool entry of ``v`` of ``source``."""
        spec = self.spec(source, v, LAB_CTX)
        return Entry(spec.served_name, spec, "variant")

    def describe(self, source: str, lease: Lease) -> dict:
        """What every place showing a variant shows: its memory (one definition) and provenance."""
        info = lease.info
        try:
            src = sources.resolve_local(source, self.manager.allowed_dir) if not sources.looks_like_repo_id(source) else None
        except ModelNotFound:
            src = None
        if src is not None and src.is_dir() and info.backend == "llamacpp":
            src = None  # a folder of GGUFs: the variant's own record names the file
        return {"memory": model_memory(info), "provenance": provenance(info.source, info.quantization, src,
                                                                          projector=info.details.get("projector"))}

    def _held_or_open(self, source: str, v: Variant) -> tuple[Lease, bool]:
        """The pooled lease of ``v`` when Compare holds it (same spec: same memory), else a fresh one
        the caller closes (second item True; with a model pool: borrowed, closing gives it back)."""
        key = (source, v.label, LAB_CTX)
        if key in self._pool:
            return self._pool[key], False
        return self._open(source, v, LAB_CTX), True

    def _open(self, source: str, v: Variant, n_ctx: int) -> Lease:
        """``v`` loaded: borrowed from the model pool by its name when the server has one (loaded there
        if it is not resident), else a lease of the lab's own."""
        pool = self.manager.pool
        if pool is not None and n_ctx == LAB_CTX:
            entry = pool.remember(self._entry(source, v))
            return self.manager.borrow(entry.name)
        return self.manager.open_variant(self.spec(source, v, n_ctx))

    def _pooled(self, source: str, v: Variant, n_ctx: int) -> Lease:
        """Compare's lease of ``v``: with a model pool a borrowed one (given back after the comparison);
        without, one of the last ``keep`` the lab holds."""
        if self.manager.pool is not None:
            return self._open(source, v, n_ctx)
        key = (source, v.label, n_ctx)
        if key in self._pool:
            self._pool.move_to_end(key)
            return self._pool[key]
        while len(self._pool) >= self.keep:
            _, old = self._pool.popitem(last=False)
            old.close()
        self._pool[key] = self._open(source, v, n_ctx)
        return self._pool[key]

    def release(self) -> int:
        """Unload every variant the lab made (with a model pool: every resident variant, whoever asked
        for it, except one running a reply); returns how many."""
        with self._lock:
            pool = self.manager.pool
            if pool is not None:
                resident = {row["name"] for row in pool.listing()
                            if row["kind"] == "variant" and row["status"] == LOADED and not row["running"]}
                n = 0
                for name in sorted(resident):
                    try:
                        pool.unload(name)
                        n += 1
                    except InvalidRequest:  # unloaded meanwhile (evicted, idle)
                        pass
                return n
            n = len(self._pool)
            for lease in self._pool.values():
                lease.close()
            self._pool.clear()
            return n

    def check_memory(self, source: str, variants: list[Variant], n_ctx: int, together: bool) -> list[int]:
        """Estimated bytes per variant; OutOfMemory before any work if they cannot fit."""
        path = sources.resolve_local(source, self.manager.allowed_dir) if not sources.looks_like_repo_id(source) else None
        n_params = estimate_params(path) if path else 0
        if not n_params:
            return [0 for _ in variants]
        meta = gguf.read_gguf_metadata(path) if path.is_file() and path.suffix == ".gguf" else {}
        base_kv = (self.base_spec.cache_type if self.base_spec else None) or "f16"

        def kv(v: Variant) -> int:  # 0 when the architecture is not in the metadata
            kv_type = (v.kv or base_kv) if self.registry.supports(v.backend, KV_CAPABILITY) else "f16"
            return gguf.kv_cache_bytes(meta, n_ctx, kv_type)

        need = [estimate_model_bytes(n_params, v.quantization if v.quantization in BITS_PER_WEIGHT else "Q8_0", kv(v))
                for v in variants]
        pooled = sum(model_memory(lease.info)["total_bytes"] for lease in self._pool.values())
        if self.manager.pool is not None:  # variants resident in the pool need no more memory
            wanted = {self.variant_name(source, v) for v in variants}
            pooled = sum(model_memory(r.info)["total_bytes"] for r in self.manager.pool.residents()
                         if r.pool_name in wanted)
        total = (sum(need) if together else max(need)) - (pooled if together else 0)
        ok, free = fits(max(total, 0), monitor=self.monitor)
        if not ok:
            raise OutOfMemory(f"These variants need about {total / 2**20:,.0f} MiB but only {free / 2**20:,.0f} MiB "
                              "is free: choose fewer or smaller variants.")
        return need

    # --- compare ---------------------------------------------------------------------------------

    def compare(self, source: str, variant_texts, prompt: str, params: SamplingParams,
                interval_s: float = 0.05, images: tuple = ()) -> Iterator[list[dict]]:
        """Stream every variant's reply to the same prompt (and ``images``, decoded pictures: the quant
        variants of a vision model compared on the same picture) at once. Yields one dict per variant:
        {variant, text, done, finish_reason, stats, memory, provenance, footprint_mib} (stats and
        finish_reason filled when that variant is done; footprint_mib = memory["total_mib"])."""
        if not (prompt or "").strip():
            raise InvalidRequest("The prompt is empty.", "prompt")
        variants = parse_variants(variant_texts, self.registry, at_least=1, at_most=MAX_COMPARE)
        source = self.source_of(source)
        params = params.validated()
        request = ChatRequest((Message("user", prompt, images=tuple(images)),), params)
        if not self._lock.acquire(timeout=0.1):
            raise InvalidRequest("Another comparison or evaluation is running; try again when it is done.")
        borrowed: list[Lease] = []  # with a model pool: given back (unpinned) when the comparison ends
        try:
            pool = self.manager.pool
            if pool is not None and 0 < pool.models_max < len(variants):
                raise InvalidRequest(f"Comparing {len(variants)} variants needs them loaded together, but this "
                                     f"server keeps at most {pool.models_max} (--models-max): choose fewer.",
                                     "variants")
            self.check_memory(source, variants, COMPARE_CTX, together=True)
            leases = []
            for v in variants:
                leases.append(self._pooled(source, v, COMPARE_CTX))
                if pool is not None:
                    borrowed.append(leases[-1])
            state = []
            for v, lease in zip(variants, leases):
                about = self.describe(source, lease)
                state.append({"variant": v.label, "text": "", "done": False, "finish_reason": None, "stats": {},
                              "footprint_mib": about["memory"]["total_mib"], **about})
            cancel = threading.Event()
            errors: list[BaseException] = []

            def run(i: int, lease: Lease) -> None:
                gen = None
                try:
                    gen = lease.stream(request, threading.Event(), endpoint="compare")
                    for d in gen:
                        state[i]["text"] += d.text
                        if cancel.is_set():
                            break
                except BaseException as exc:  # reported in the pane and re-raised once all stop
                    errors.append(exc)
                    state[i]["text"] += f"\n[error: {exc}]"
                finally:
                    if gen is not None:
                        gen.close()
                        s = gen.stats
                        state[i]["stats"] = {
                            "ttft_s": s.ttft_s, "tokens_per_s": s.tokens_per_s, "completion_tokens": s.completion_tokens,
                            "prompt_tokens": s.prompt_tokens, "e2e_s": round(s.e2e_s, 3),
                            "finish_reason": s.finish_reason}
                    state[i]["finish_reason"] = s.finish_reason or ("error" if errors else None)
                    state[i]["done"] = True

            threads = [threading.Thread(target=run, args=(i, lease), daemon=True, name=f"compare-{i}")
                       for i, lease in enumerate(leases)]
            for t in threads:
                t.start()
            try:
                while any(t.is_alive() for t in threads):
                    time.sleep(interval_s)
                    yield [dict(s) for s in state]
            finally:
                cancel.set()
                for t in threads:
                    t.join()
            if errors and isinstance(errors[0], BackendError):
                raise errors[0]
            yield [dict(s) for s in state]
        finally:
            for lease in borrowed:
                lease.close()
            self._lock.release()

    # --- evaluate --------------------------------------------------------------------------------

    def evaluate(self, source: str, variant_texts, reference: str = DEFAULT_REFERENCE, text_path: str | None = None,
                 max_tokens: int = 1024, window: int = 256, decode_tokens: int = 32,
                 progress: Callable[[float, str], None] = lambda f, m: None,
                 scoring: str = "all", cancel: threading.Event | None = None) -> list[quality.QualityRow]:
        """``scoring``: "all" (every position of each window) or "llama.cpp" (llama-perplexity's chunks
        and second-half positions, so its PPL, KLD and "Same top p" can be checked on the same GGUFs).
        Only the start of the text that can be scored is read (``quality.text_bytes_for``). Once
        ``cancel`` is set (Stop, a client gone) it stops before the next window or variant (Cancelled)."""
        cancel = cancel or threading.Event()
        quality.scoring_offset(scoring, 0)  # an unknown scoring fails before any work
        variants = parse_variants(variant_texts, self.registry, at_least=1)
        source = self.source_of(source)
        ref_variant = Variant.parse(reference, self.registry)
        max_tokens, window = int(max_tokens), int(window)
        if not 16 <= window <= 4096:
            raise InvalidRequest("window must be between 16 and 4096 tokens.", "window")
        if max_tokens < window:
            raise InvalidRequest(f"max tokens ({max_tokens}) must be at least one window ({window}).", "max_tokens")
        if max_tokens > MAX_EVAL_TOKENS:
            raise InvalidRequest(f"max tokens ({max_tokens:,}) is more than one evaluation scores (at most "
                                 f"{MAX_EVAL_TOKENS:,}): score fewer tokens.", "max_tokens")
        if text_path:  # resolved once (inside --models-dir on an exposed server); exactly that file is read
            try:
                text_path = str(sources.resolve_local(text_path, self.manager.allowed_dir))
            except ModelNotFound as exc:
                raise InvalidRequest(str(exc).replace("Models must", "Evaluation texts must").replace(
                    "No model at", "No evaluation text at"), "text_path") from exc
        text = quality.load_text(text_path, quality.text_bytes_for(max_tokens))
        if not self._lock.acquire(timeout=0.1):
            raise InvalidRequest("Another comparison or evaluation is running; try again when it is done.")
        ref = quality.Reference(directory=self.manager.cache_dir)
        try:
            self.check_memory(source, [ref_variant, *variants], LAB_CTX, together=False)
            variants = [v for v in variants if v != ref_variant]  # the reference has its own row
            steps = len(variants) + 1
            progress(0.0, f"Reference {ref_variant.label}: loading")
            lease, own = self._held_or_open(source, ref_variant)
            try:
                if scoring == "llama.cpp":
                    bos = lease.tokenize("")  # [BOS] when the model adds one, as llama-perplexity asks
                    windows = quality.chunks_llamacpp(lease.tokenize(text), window, max_tokens, bos[0] if bos else None)
                else:
                    windows = quality.windows_of(lease.tokenize(text), window, max_tokens)
                progress(0.02, f"Reference {ref_variant.label}: scoring {len(windows)} windows of {window} tokens")
                s = quality.score(lease.logits, windows, ref, build_reference=True, scoring=scoring,
                                  progress=lambda f: progress(f / steps, f"Reference {ref_variant.label}"),
                                  cancel=cancel)
                s.update(kld_mean=0.0, kld_p99=0.0, top1_agreement=1.0)
                rows = [self._row(source, ref_variant, lease, s, decode_tokens, cancel, is_reference=True)]
            finally:
                if own:
                    lease.close()
            for i, v in enumerate(variants, start=1):
                if cancel.is_set():
                    raise Cancelled("The evaluation was stopped.")
                progress(i / steps, f"{v.label}: loading")
                lease, own = self._held_or_open(source, v)
                try:
                    s = quality.score(lease.logits, windows, ref, scoring=scoring, cancel=cancel,
                                      progress=lambda f, i=i, v=v: progress((i + f) / steps, f"{v.label}: scoring"))
                    rows.append(self._row(source, v, lease, s, decode_tokens, cancel))
                finally:
                    if own:
                        lease.close()
            progress(1.0, "Done")
            rows.sort(key=lambda r: (not r.is_reference, r.kld_mean, -r.footprint_mib))
            return rows
        finally:
            ref.close()
            self._lock.release()

    def _row(self, source: str, v: Variant, lease: Lease, s: dict, decode_tokens: int, cancel: threading.Event,
             is_reference: bool = False) -> quality.QualityRow:
        decode = _decode_speed(lease, decode_tokens, cancel) if decode_tokens > 1 else None
        about = self.describe(source, lease)
        mem, prov = about["memory"], about["provenance"]
        return quality.QualityRow(
            variant=v.label, backend=v.backend, quantization=lease.info.quantization, ppl=s["ppl"],
            kld_mean=s["kld_mean"], kld_p99=s["kld_p99"], top1_agreement=s["top1_agreement"], tokens=s["tokens"],
            footprint_mib=mem["total_mib"], eval_tokens_per_s=s["eval_tokens_per_s"], decode_tokens_per_s=decode,
            is_reference=is_reference, bpw=prov["bpw"], source=prov["source_name"], source_type=prov["source_type"],
            note=prov["note"], warning=prov["warning"], tensors=prov["tensors"] or prov.get("method"), memory=mem,
            flash_attn=lease.info.details.get("flash_attn"))


def _decode_speed(lease: Lease, tokens: int, cancel: threading.Event) -> float | None:
    """Greedy decode speed of a variant, measured by the manager's one timing path (stops on ``cancel``)."""
    request = ChatRequest((Message("user", "Write a short paragraph about rivers."),),
                          SamplingParams(max_new_tokens=tokens, temperature=0.0))
    stop = threading.Event()  # the stream's own: the manager sets it when the stream ends
    gen = lease.stream(request, stop, endpoint="evaluate")
    for _ in gen:
        if cancel.is_set():
            stop.set()
    if cancel.is_set():
        raise Cancelled("The evaluation was stopped.")
    return gen.stats.tokens_per_s
