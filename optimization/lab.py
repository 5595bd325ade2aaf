"""The quantization lab: variants of one model across both backends, compared side by side and
measured against a reference.

Variants are loaded as extra backend instances, apart from the chat's resident model, which is
never touched. Memory is checked against free RAM/VRAM before any variant is loaded.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from backends import sources
from backends.base import Backend, ChatRequest, LoadedModel, Message, ModelSpec, SamplingParams
from backends.errors import BackendError, InvalidRequest, OutOfMemory, UnsupportedQuantization
from backends.manager import ModelManager, backend_class
from optimization import quality, quantize
from optimization.memory import BITS_PER_WEIGHT, MemoryMonitor, estimate_model_bytes, fits, kv_cache_bytes

LAB_BACKENDS = ("llamacpp", "transformers")
DEFAULT_REFERENCE = "transformers:fp32"
MAX_COMPARE = 4


@dataclass(frozen=True)
class Variant:
    backend: str
    quantization: str

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.quantization}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        backend, sep, quant = (text or "").strip().partition(":")
        if not sep or backend not in LAB_BACKENDS:
            raise UnsupportedQuantization(
                f"Unknown variant {text!r}: write backend:quantization, e.g. llamacpp:Q8_0 or transformers:nf4.")
        return cls(backend, quantize.normalize_quantization(backend, quant))


def variant_menu() -> list[str]:
    return [f"llamacpp:{q}" for q in quantize.LLAMACPP_QUANTS if q != quantize.GGUF_AS_FILE] + \
           [f"transformers:{q}" for q in quantize.TRANSFORMERS_QUANTS]


def parse_variants(texts, at_least: int = 1, at_most: int | None = None) -> list[Variant]:
    if isinstance(texts, str):
        texts = [t for t in texts.split(",") if t.strip()]
    variants = list(dict.fromkeys(Variant.parse(t) for t in (texts or [])))
    if len(variants) < at_least:
        raise InvalidRequest(f"Choose at least {at_least} variant{'s' if at_least > 1 else ''}.", "variants")
    if at_most is not None and len(variants) > at_most:
        raise InvalidRequest(f"Choose at most {at_most} variants.", "variants")
    return variants


def estimate_params(path: Path) -> int:
    """Parameter count of a source, from its files (no load): GGUF size / its bits per weight, or
    the safetensors' bytes / their dtype size."""
    if path.is_file() and path.suffix == ".gguf":
        own = quantize.gguf_file_type(path) or "Q8_0"
        return int(path.stat().st_size * 8 / BITS_PER_WEIGHT.get(own, 8.5))
    weights = list(path.glob("*.safetensors")) if path.is_dir() else []
    if weights:
        return int(sum(w.stat().st_size for w in weights) / 4)  # assume fp32; an over-estimate for bf16
    return 0


class Lab:
    def __init__(self, manager: ModelManager, monitor: MemoryMonitor | None = None, keep: int = MAX_COMPARE):
        self.manager = manager
        self.monitor = monitor
        self.keep = keep
        self._pool: OrderedDict[tuple[str, str, int], tuple[Backend, LoadedModel]] = OrderedDict()
        self._lock = threading.Lock()

    # --- loading ---------------------------------------------------------------------------------

    def _spec(self, source: str, v: Variant, n_ctx: int) -> ModelSpec:
        return ModelSpec(source=source, backend=v.backend, quantization=v.quantization, n_ctx=n_ctx)

    def _open(self, source: str, v: Variant, n_ctx: int) -> tuple[Backend, LoadedModel]:
        spec = self.manager.validate(self._spec(source, v, n_ctx))  # same path rules as the chat model
        backend = backend_class(v.backend, self.manager.registry)(cache_dir=self.manager.cache_dir)
        try:
            return backend, backend.load(spec)
        except BaseException:
            backend.unload()
            raise

    def _pooled(self, source: str, v: Variant, n_ctx: int) -> tuple[Backend, LoadedModel]:
        key = (source, v.label, n_ctx)
        if key in self._pool:
            self._pool.move_to_end(key)
            return self._pool[key]
        while len(self._pool) >= self.keep:
            _, (old, _) = self._pool.popitem(last=False)
            old.unload()
        self._pool[key] = self._open(source, v, n_ctx)
        return self._pool[key]

    def release(self) -> int:
        """Unload every pooled variant; returns how many."""
        with self._lock:
            n = len(self._pool)
            for backend, _ in self._pool.values():
                backend.unload()
            self._pool.clear()
            return n

    def check_memory(self, source: str, variants: list[Variant], n_ctx: int, together: bool) -> list[int]:
        """Estimated bytes per variant; OutOfMemory before any work if they cannot fit."""
        path = sources.resolve_local(source, self.manager.allowed_dir) if not sources.looks_like_repo_id(source) else None
        n_params = estimate_params(path) if path else 0
        if not n_params:
            return [0 for _ in variants]
        meta = quantize.read_gguf_metadata(path) if path.is_file() and path.suffix == ".gguf" else {}
        kv = kv_cache_bytes(meta, n_ctx)  # 0 when the architecture is not in the metadata
        need = [estimate_model_bytes(n_params, v.quantization if v.quantization in BITS_PER_WEIGHT else "Q8_0", kv)
                for v in variants]
        pooled = sum(info.footprint_bytes for _, info in self._pool.values())
        total = (sum(need) if together else max(need)) - (pooled if together else 0)
        ok, free = fits(max(total, 0), monitor=self.monitor)
        if not ok:
            raise OutOfMemory(f"These variants need about {total / 2**20:,.0f} MiB but only {free / 2**20:,.0f} MiB "
                              "is free: choose fewer or smaller variants.")
        return need

    # --- compare ---------------------------------------------------------------------------------

    def compare(self, source: str, variant_texts, prompt: str, params: SamplingParams,
                interval_s: float = 0.05) -> Iterator[list[dict]]:
        """Stream every variant's reply to the same prompt at once. Yields one dict per variant:
        {variant, text, done, stats} (stats filled when that variant is done)."""
        if not (prompt or "").strip():
            raise InvalidRequest("The prompt is empty.", "prompt")
        variants = parse_variants(variant_texts, at_least=1, at_most=MAX_COMPARE)
        params = params.validated()
        request = ChatRequest((Message("user", prompt),), params)
        if not self._lock.acquire(timeout=0.1):
            raise InvalidRequest("Another comparison or evaluation is running; try again when it is done.")
        try:
            self.check_memory(source, variants, 2048, together=True)
            loaded = [self._pooled(source, v, 2048) for v in variants]
            state = [{"variant": v.label, "text": "", "done": False, "stats": {},
                      "footprint_mib": round(info.footprint_bytes / 2**20, 1)} for v, (_, info) in zip(variants, loaded)]
            cancel = threading.Event()
            errors: list[BaseException] = []

            def run(i: int, backend: Backend) -> None:
                t0 = time.perf_counter()
                first, tokens, prompt_tokens = None, 0, 0
                try:
                    for d in backend.stream(request, cancel):
                        if d.tokens and first is None:
                            first = time.perf_counter()
                        tokens += d.tokens
                        prompt_tokens = d.prompt_tokens or prompt_tokens
                        state[i]["text"] += d.text
                except BaseException as exc:  # reported in the pane and re-raised once all stop
                    errors.append(exc)
                    state[i]["text"] += f"\n[error: {exc}]"
                end = time.perf_counter()
                decode = end - first if first else 0
                state[i]["stats"] = {
                    "ttft_s": round(first - t0, 4) if first else None,
                    "tokens_per_s": round((tokens - 1) / decode, 2) if tokens > 1 and decode > 0 else None,
                    "completion_tokens": tokens, "prompt_tokens": prompt_tokens, "e2e_s": round(end - t0, 3)}
                state[i]["done"] = True

            threads = [threading.Thread(target=run, args=(i, b), daemon=True, name=f"compare-{i}")
                       for i, (b, _) in enumerate(loaded)]
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
            self._lock.release()

    # --- evaluate --------------------------------------------------------------------------------

    def evaluate(self, source: str, variant_texts, reference: str = DEFAULT_REFERENCE, text_path: str | None = None,
                 max_tokens: int = 1024, window: int = 256, decode_tokens: int = 32,
                 progress: Callable[[float, str], None] = lambda f, m: None) -> list[quality.QualityRow]:
        variants = parse_variants(variant_texts, at_least=1)
        ref_variant = Variant.parse(reference)
        max_tokens, window = int(max_tokens), int(window)
        if not 16 <= window <= 4096:
            raise InvalidRequest("window must be between 16 and 4096 tokens.", "window")
        if max_tokens < window:
            raise InvalidRequest(f"max tokens ({max_tokens}) must be at least one window ({window}).", "max_tokens")
        if text_path and self.manager.allowed_dir is not None:
            sources.resolve_local(text_path, self.manager.allowed_dir)  # exposed server: no reading outside
        text = quality.load_text(text_path)
        if not self._lock.acquire(timeout=0.1):
            raise InvalidRequest("Another comparison or evaluation is running; try again when it is done.")
        ref = quality.Reference(directory=self.manager.cache_dir)
        try:
            self.check_memory(source, [ref_variant, *variants], window, together=False)
            steps = len(variants) + 1
            progress(0.0, f"Reference {ref_variant.label}: loading")
            backend, info = self._open(source, ref_variant, max(window, 512))
            try:
                windows = quality.windows_of(backend.tokenize(text), window, max_tokens)
                progress(0.02, f"Reference {ref_variant.label}: scoring {len(windows)} windows of {window} tokens")
                ref_scores = quality.score(backend.logits, windows, ref, build_reference=True,
                                           progress=lambda f: progress(f / steps, f"Reference {ref_variant.label}"))
            finally:
                backend.unload()
            rows = []
            for i, v in enumerate(variants, start=1):
                progress(i / steps, f"{v.label}: loading")
                backend, info = self._open(source, v, max(window, 512))
                try:
                    s = quality.score(backend.logits, windows, ref,
                                      progress=lambda f, i=i, v=v: progress((i + f) / steps, f"{v.label}: scoring"))
                    decode = _decode_speed(backend, decode_tokens) if decode_tokens > 1 else None
                finally:
                    backend.unload()
                rows.append(quality.QualityRow(
                    variant=v.label, backend=v.backend, quantization=info.quantization, ppl=s["ppl"],
                    kld_mean=s["kld_mean"], kld_p99=s["kld_p99"], top1_agreement=s["top1_agreement"], tokens=s["tokens"],
                    footprint_mib=info.footprint_bytes / 2**20, eval_tokens_per_s=s["eval_tokens_per_s"],
                    decode_tokens_per_s=decode, is_reference=(v == ref_variant)))
            progress(1.0, "Done")
            rows.sort(key=lambda r: (r.kld_mean, -r.footprint_mib))
            del ref_scores
            return rows
        finally:
            ref.close()
            self._lock.release()


def _decode_speed(backend: Backend, tokens: int = 32) -> float | None:

    request = ChatRequest((Message("user", "Write a short paragraph about rivers."),),
                          SamplingParams(max_new_tokens=tokens, temperature=0.0))
    first, n = None, 0
    for d in backend.stream(request, threading.Event()):
        if d.tokens:
            n += d.tokens
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return (n - 1) / (end - first) if first and n > 1 and end > first else None
