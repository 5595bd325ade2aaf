"""GGUF models through llama-cpp-python.

One ``Llama`` per backend instance, guarded by one lock (the object is not thread-safe). The prompt
is rendered with the chat template stored in the GGUF; tokens are generated with ``Llama.generate``
and detokenized incrementally as bytes, so multi-byte characters split across tokens come out whole.
"""

from __future__ import annotations

import codecs
import os
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from backends import sources
from backends.base import Backend, ChatRequest, LoadedModel, ModelSpec, Progress, TextDelta, _no_progress, check_prompt_tokens
from backends.errors import ContextLengthExceeded, InvalidRequest, ModelLoadError, OutOfMemory
from backends import gguf
from backends.gguf import kv_cache_bytes
from backends.llamacpp_open import open_llama
from backends.memory import release_memory

# Used when a GGUF carries no chat template (ChatML, what most small instruct models use).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil is a requirement
        return os.cpu_count() or 1


class LlamaCppBackend(Backend):
    name = "llamacpp"
    capabilities = frozenset({"stream", "logits", "tokenize", "files"})
    quantizations = gguf.GGUF_MENU
    default_quantization = gguf.GGUF_AS_FILE
    pseudo_quantizations = (gguf.GGUF_AS_FILE,)

    @classmethod
    def normalize_quantization(cls, quantization: str | None) -> str:
        """Any GGUF type llama.cpp can make, beyond the menu (e.g. "q3_k_s" -> "Q3_K_S")."""
        q = str(quantization or "").strip()
        if q.upper() in gguf.GGUF_FTYPES:
            return q.upper()
        return super().normalize_quantization(quantization)

    def __init__(self, cache_dir: Path | None = None):
        self._cache_dir = cache_dir or sources.default_cache_dir()
        self._llm = None
        self._lock = threading.Lock()
        self._formatter = None
        self._logits_llm = None  # a second context with logits_all, made on first logits() call
        self._spec: ModelSpec | None = None
        self._path: Path | None = None
        self._n_gpu_layers = 0
        self._engine = None  # BatchEngine when spec.parallel > 1

    # --- lifecycle -------------------------------------------------------------------------------

    def load(self, spec: ModelSpec, progress: Progress = _no_progress) -> LoadedModel:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        t0 = time.perf_counter()
        progress(0.05, "Resolving model file")
        path = sources.find_gguf(sources.resolve(spec.source, gguf_file=spec.gguf_file,
                                                 progress=sources.scaled(progress, 0.05, 0.15)), spec.gguf_file)
        gguf.check_gguf(path)
        quant = self.normalize_quantization(spec.quantization)
        if quant != gguf.GGUF_AS_FILE:
            progress(0.15, f"Making the {quant} variant (cached after the first time)")
            path = gguf.gguf_variant(path, quant, self._cache_dir)
        progress(0.4, f"Loading {path.name}")
        if spec.n_ctx < 16:
            raise InvalidRequest(f"n_ctx must be at least 16, got {spec.n_ctx}.", "n_ctx")
        batched = spec.parallel > 1
        gpu_offload = _gpu_offload_supported()
        asked = spec.n_gpu_layers
        n_gpu_layers = (-1 if asked is None else asked) if gpu_offload else 0
        try:
            llm = open_llama(
                str(path),
                n_ctx=64 if batched else spec.n_ctx,  # batched: the engine's context holds the KV caches
                n_threads=spec.n_threads or physical_cores(),
                n_gpu_layers=n_gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            msg = str(exc)
            if "alloc" in msg.lower() or "memory" in msg.lower():
                raise OutOfMemory(f"Not enough memory to load {path.name} with n_ctx={spec.n_ctx}.") from exc
            raise ModelLoadError(f"llama.cpp could not load {path.name}: {msg}") from exc
        progress(0.9, "Reading chat template")
        meta = llm.metadata
        template = meta.get("tokenizer.chat_template") or CHATML_TEMPLATE
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "",
        )
        self._llm, self._spec, self._path, self._n_gpu_layers = llm, spec, path, n_gpu_layers
        n_threads = spec.n_threads or physical_cores()
        if batched:
            from backends.llamacpp_batch import BatchEngine

            try:
                self._engine = BatchEngine(llm, spec.parallel, spec.n_ctx, n_threads, prefix_cache=spec.prefix_cache)
            except BaseException:
                llm.close()
                raise
        n_ctx = spec.n_ctx
        ftype = meta.get("general.file_type")
        own_type = gguf.GGUF_NAMES_BY_FTYPE.get(int(ftype), quant) if ftype is not None else quant
        weights = int(llm._model.size())
        details = {
            "file": path.name,
            "n_ctx": n_ctx,
            "parallel": spec.parallel,
            "n_threads": llm.n_threads if hasattr(llm, "n_threads") else spec.n_threads,
            "n_gpu_layers": n_gpu_layers,
            "gpu_offload_supported": gpu_offload,
            "n_params": int(llm._model.n_params()),
            "weights_bytes": weights,
            "chat_template": "gguf" if meta.get("tokenizer.chat_template") else "chatml (fallback)",
        }
        if asked and not gpu_offload:  # asked for GPU layers on a CPU build: say so instead of failing
            details["warning"] = "This llama.cpp build has no GPU support: running on the CPU."
        return LoadedModel(
            name=spec.served_name or path.stem,
            backend=self.name,
            quantization=own_type,
            source=str(path),
            context_length=n_ctx,
            footprint_bytes=weights + kv_cache_bytes(meta, n_ctx * spec.parallel),
            load_seconds=time.perf_counter() - t0,
            device="cuda" if n_gpu_layers and gpu_offload else "cpu",
            details=details,
        )

    @property
    def max_concurrency(self) -> int:
        return self._engine.slots if self._engine is not None else 1

    def unload(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        with self._lock:
            for llm in (self._llm, self._logits_llm):
                if llm is not None:
                    llm.close()
            self._llm = self._logits_llm = self._formatter = None
        release_memory()

    # --- generation ------------------------------------------------------------------------------

    def prompt_tokens(self, request: ChatRequest) -> list[int]:
        llm = self._require()
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            rendered = self._formatter(messages=messages)
        except Exception as exc:  # jinja errors: e.g. a template that rejects a system message
            raise InvalidRequest(f"The model's chat template rejected these messages: {exc}") from exc
        add_bos = not rendered.added_special
        return llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[TextDelta]:
        import llama_cpp

        llm = self._require()
        if self._engine is not None:
            yield from self._stream_batched(request, cancel)
            return
        params = request.params
        with self._lock:
            tokens = self.prompt_tokens(request)
            n_prompt, n_ctx = len(tokens), llm.n_ctx()
            check_prompt_tokens(request, n_prompt, n_ctx)
            budget = min(params.max_new_tokens, n_ctx - n_prompt)
            yield TextDelta("", prompt_tokens=n_prompt)  # known before the first token, even if cancelled
            llm.set_seed(params.seed if params.seed is not None else secrets.randbits(31))
            if self._spec is not None and not self._spec.prefix_cache:
                llm.reset()  # no reuse of the previous request's KV: the same prompt gives the same text
            vocab = llm._model.vocab
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            generated = 0
            finish = "length"
            gen = llm.generate(
                tokens,
                top_k=params.top_k,
                top_p=params.top_p,
                min_p=0.0,
                temp=params.temperature,
                repeat_penalty=params.repetition_penalty,
            )
            try:
                for token in gen:
                    if cancel.is_set():
                        finish = "cancelled"
                        break
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        finish = "stop"
                        break
                    generated += 1
                    text = decoder.decode(llm.detokenize([token]))
                    yield TextDelta(text, tokens=1)
                    if generated >= budget:
                        break
                    if cancel.is_set():
                        finish = "cancelled"
                        break
            finally:
                gen.close()
            tail = decoder.decode(b"", final=True)
            yield TextDelta(tail, finish_reason=finish, prompt_tokens=n_prompt)

    def _stream_batched(self, request: ChatRequest, cancel: threading.Event) -> Iterator[TextDelta]:
        tokens = self.prompt_tokens(request)
        n_ctx = self._engine.n_ctx_per_seq
        check_prompt_tokens(request, len(tokens), n_ctx)
        budget = min(request.params.max_new_tokens, n_ctx - len(tokens))
        yield from self._engine.submit(tokens, request.params, budget, cancel)

    def tokenize(self, text: str) -> list[int]:
        return self._require().tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def logits(self, token_ids: Sequence[int]):
        """Logits at every position, from a second context created with logits_all=True (the
        chat context keeps logits off, which is what makes generation fast)."""
        import numpy as np

        self._require()
        with self._lock:
            if self._logits_llm is None:
                self._logits_llm = open_llama(
                    str(self._path), n_ctx=max(len(token_ids), 512), logits_all=True,
                    n_threads=(self._spec.n_threads if self._spec else None) or physical_cores(),
                    n_gpu_layers=self._n_gpu_layers,
                    verbose=False,
                )
            lg = self._logits_llm
            if len(token_ids) > lg.n_ctx():
                raise ContextLengthExceeded(f"{len(token_ids)} tokens do not fit the {lg.n_ctx()}-token context.")
            lg.reset()
            lg.eval(list(token_ids))
            return np.array(lg.scores[: len(token_ids)], dtype=np.float32, copy=True)

    def _require(self):
        if self._llm is None:
            from backends.errors import NoModelLoaded

            raise NoModelLoaded()
        return self._llm


def _gpu_offload_supported() -> bool:
    import llama_cpp

    try:
        return bool(llama_cpp.llama_supports_gpu_offload())
    except AttributeError:  # pragma: no cover - very old builds
        return False
