"""GGUF models through llama-cpp-python.

One ``Llama`` per backend instance, guarded by one lock (the object is not thread-safe). The prompt
is rendered with the chat template stored in the GGUF (``llamacpp_template``) or, for a raw prompt,
tokenized as is. With one slot, tokens are evaluated on the ``Llama`` object's own context (its KV
prefix reused like ``Llama.generate`` does) and drawn with the request's own llama.cpp sampler chain
(``llamacpp_sampling``, the same chain the batch engine uses); they are detokenized incrementally as
bytes, so multi-byte characters split across tokens come out whole.

With ``spec.speculative == "ngram"`` (one slot), greedy requests are decoded speculatively: an n-gram
prompt-lookup drafter (``backends.speculative``) proposes up to ``spec.spec_draft_tokens`` tokens, the
last token and the draft are evaluated in one ``llama_decode`` with logits at every position, the
request's own sampler chain picks the token at each position in turn (so grammar and penalties apply
exactly as in plain decoding), the draft is accepted up to the first disagreement, whose pick is the
next token, and the KV cells of the rejected draft tokens are removed. Sampled requests decode plainly.
With several slots the batch engine does the same per sequence inside its shared batches
(``llamacpp_batch``). A model whose memory cannot drop the rejected cells (recurrent or hybrid) is
served without it, and its details say so.

Greedy output equals plain decoding's wherever the arg-max is not a near-tie. llama.cpp picks its CPU
kernels by batch shape (one row per sequence: ``vec_dot``, the softmax rounded to f16 before the V
product; two or more: llamafile's sgemm), so without flash attention a token verified beside its drafts
gets logits up to ~1.6 apart (mean |diff| ~0.7) from the same token decoded alone: measured with
``bench_speculative.py --identity 64``, 7 of 12 varied prompts' greedy replies differ within 64 tokens
(first difference at token 9..48); with flash attention (the default, ``auto``), 0 of 12. llama.cpp's own
speculative decoding has the same property ("expected - we use different kernels for different batch
sizes", ggml-org/llama.cpp#23335). With flash attention each query row is computed
alone and the verified logits are bit-identical to single-token decoding, until the context passes 256
tokens: single-token decoding then takes the split-KV path (a KV view of 512+ cells, more than one
thread), whose reduction order differs again. tests/test_speculative.py and
benchmarks/bench_speculative.py measure both.
"""

from __future__ import annotations

import codecs
import threading
import time
from dataclasses import replace
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from backends.files import sources
from backends.base import Backend, ChatRequest, LoadedModel, ModelSpec, Progress, TextDelta, _no_progress, check_prompt_tokens
from backends.errors import ContextLengthExceeded, InvalidRequest, ModelLoadError, OutOfMemory
from backends.llamacpp.sampling import sampler_for, token_logprob
from backends.speculative import NgramDrafter, SpecStats, check_speculative
from backends.files import gguf, hf_to_gguf, hub_projector, imatrix_file
from backends.files.gguf import kv_cache_bytes
from backends.llamacpp import compute
from backends.llamacpp.detokenize import detokenize_bytes
from backends.llamacpp.open import flash_attn_shown, kv_cache_options, open_llama
from backends.llamacpp.vision import Vision, find_mmproj
from backends.memory import release_memory
from backends.threads import AdaptiveThreads, ContextThreads
from backends.threads import choose as choose_threads

# Used when a GGUF carries no chat template (ChatML, what most small instruct models use).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Tokens per embedding input: llama-server's default physical batch (an input must fit one ubatch to be
# pooled, and llama.cpp keeps a logits row per input token in embedding mode).
EMBED_MAX_TOKENS = 512


class LlamaCppBackend(Backend):
    name = "llamacpp"
    capabilities = frozenset({"stream", "logits", "tokenize", "files", "kv_cache_type"})
    quantizations = gguf.GGUF_MENU
    default_quantization = gguf.GGUF_AS_FILE
    pseudo_quantizations = (gguf.GGUF_AS_FILE,)
    samplers = frozenset({"min_p", "typical_p", "presence_penalty", "frequency_penalty", "dry_multiplier",
                          "xtc_probability", "mirostat"})
    features = frozenset({"prompt", "continue_final", "tools", "constraint", "logprobs", "embeddings", "vision"})

    @classmethod
    def normalize_quantization(cls, quantization: str | None) -> str:
        """Any GGUF type llama.cpp can make, beyond the menu (e.g. "q3_k_s" -> "Q3_K_S")."""
        q = str(quantization or "").strip()
        base, with_imatrix = imatrix_file.split_quant(q)
        if with_imatrix and base.upper() in gguf.GGUF_FTYPES:  # "q4_k_m+imatrix" -> "Q4_K_M+imatrix"
            return base.upper() + imatrix_file.IMATRIX_MARK
        if q.upper() in gguf.GGUF_FTYPES:
            return q.upper()
        return super().normalize_quantization(quantization)

    def __init__(self, cache_dir: Path | None = None):
        self._cache_dir = cache_dir or sources.default_cache_dir()
        self._llm = None
        self._lock = threading.Lock()
        self._template = None
        self._embedder = None  # an embeddings context on the same model, made on the first embed() call
        self._embed_lock = threading.Lock()
        self._logits_llm = None  # a second context with logits_all, made on first logits() call
        self._spec: ModelSpec | None = None
        self._path: Path | None = None
        self._n_gpu_layers = 0
        self._threads = None  # ThreadChoice made at load: every context of the model uses it
        self._adaptive = None  # AdaptiveThreads with auto on the CPU: the threads each decode uses now
        self._sync_threads = lambda: None
        self._engine = None  # BatchEngine when spec.parallel > 1
        self._spec_stats = SpecStats()  # drafted/accepted tokens since load (speculative decoding)
        self._speculative: str | None = None  # the speculative kind in use ("ngram"), None: off
        self._count_lock = threading.Lock()
        self._details: dict = {}
        self._vision = None  # llamacpp_vision.Vision when the model has a projector (mmproj)

    # --- lifecycle -------------------------------------------------------------------------------

    def load(self, spec: ModelSpec, progress: Progress = _no_progress) -> LoadedModel:
        from backends.llamacpp.template import ChatTemplate

        t0 = time.perf_counter()
        progress(0.05, "Resolving model file")
        path = sources.resolve(spec.source, gguf_file=spec.gguf_file, progress=sources.scaled(progress, 0.05, 0.15))
        projector_note, explicit_mmproj = None, spec.mmproj
        if not explicit_mmproj and path.is_file() and sources.looks_like_repo_id(spec.source.strip()):
            # a GGUF from a Hub repo: that repo's projector, if it has one (a named mmproj always wins)
            found = hub_projector.fetch(spec.source.strip(), path, progress=sources.scaled(progress, 0.145, 0.15))
            if found is not None:
                projector_note, explicit_mmproj = found.why, str(found.path)
        step = 0.15
        if path.is_dir() and not any(path.glob("*.gguf")) and hf_to_gguf.is_checkpoint(path):
            # a transformers checkpoint: llama.cpp's converter makes its GGUF F16 once (cached)
            path = hf_to_gguf.convert_checkpoint(path, self._cache_dir, sources.scaled(progress, 0.15, 0.3))
            step = 0.3
        path = sources.find_gguf(path, spec.gguf_file)
        gguf.check_gguf(path)
        mmproj = find_mmproj(path, explicit_mmproj)  # else beside the file given (a variant of it sees through it too)
        quant = self.normalize_quantization(spec.quantization)
        base_quant, with_imatrix = imatrix_file.split_quant(quant)
        if with_imatrix:  # llama.cpp's importance matrix, computed once per source and calibration text
            from backends.llamacpp.imatrix import imatrix_variant

            progress(step, f"Making the {quant} variant (cached after the first time)")
            path = imatrix_variant(path, base_quant, self._cache_dir, n_gpu_layers=spec.n_gpu_layers,
                                   progress=sources.scaled(progress, step, 0.4))
        elif quant != gguf.GGUF_AS_FILE:
            progress(step, f"Making the {quant} variant (cached after the first time)")
            path = gguf.gguf_variant(path, quant, self._cache_dir)
        progress(0.4, f"Loading {path.name}")
        if spec.n_ctx < 16:
            raise InvalidRequest(f"n_ctx must be at least 16, got {spec.n_ctx}.", "n_ctx")
        check_speculative(spec)
        batched = spec.parallel > 1
        gpu_offload = _gpu_offload_supported()
        asked = spec.n_gpu_layers
        n_gpu_layers = (-1 if asked is None else asked) if gpu_offload else 0
        threads = choose_threads(spec.n_threads)  # every context of this model computes with it
        kv_opts = kv_cache_options(spec)  # type_k/type_v, flash_attn (the batch engine copies them)
        try:
            llm = open_llama(
                str(path),
                n_ctx=64 if batched else spec.n_ctx,  # batched: the engine's context holds the KV caches
                n_threads=threads.threads,
                n_threads_batch=threads.threads,
                n_gpu_layers=n_gpu_layers,
                verbose=False,
                **kv_opts,
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
        try:
            self._template = ChatTemplate(template,
                                          bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "",
                                          eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "")
        except Exception as exc:  # a template jinja cannot parse
            llm.close()
            raise ModelLoadError(f"The chat template in {path.name} is not valid Jinja: {exc}") from exc
        if mmproj is not None:
            progress(0.92, f"Loading the vision projector {mmproj.name}")
            try:
                self._vision = Vision(mmproj, llm, threads.threads, use_gpu=bool(n_gpu_layers and gpu_offload))
            except BaseException:
                llm.close()
                raise
        self._llm, self._spec, self._path, self._n_gpu_layers = llm, spec, path, n_gpu_layers
        self._threads = threads
        # auto on the CPU: each decode takes the cores other processes leave (backends/threads.py)
        import llama_cpp as L

        self._adaptive = (AdaptiveThreads(threads.threads, on_change=self._threads_changed)
                          if threads.mode == "auto" and threads.threads > 1 and not n_gpu_layers else None)
        self._sync_threads = ContextThreads(L, llm._ctx.ctx, self._adaptive, threads.threads).sync
        n_threads = threads.threads
        if batched:
            from backends.llamacpp.batch import BatchEngine

            try:
                self._engine = BatchEngine(llm, spec.parallel, spec.n_ctx, n_threads, adaptive=self._adaptive,
                                           prefix_cache=spec.prefix_cache,
                                           host_cache_bytes=spec.prompt_cache_mib << 20)
            except BaseException:
                if self._vision is not None:
                    self._vision.close()
                    self._vision = None
                llm.close()
                raise
        n_ctx = spec.n_ctx
        ftype = meta.get("general.file_type")
        own_type = gguf.GGUF_NAMES_BY_FTYPE.get(int(ftype), quant) if ftype is not None else quant
        if meta.get("quantize.imatrix.file") and own_type in gguf.GGUF_FTYPES:
            own_type += imatrix_file.IMATRIX_MARK  # what it is: this type, quantized with an importance matrix
        weights = int(llm._model.size())
        kv_type = (spec.cache_type or "f16").strip().lower()
        # KV cells llama.cpp allocated: the context it made (it rounds n_ctx up, e.g. 1000 -> 1024), the
        # batch engine's (every slot's) when batched
        import llama_cpp

        kv_cells = int(llama_cpp.llama_n_ctx(self._engine.ctx)) if batched else int(llm.n_ctx())
        kv_bytes = kv_cache_bytes(meta, kv_cells, kv_type)
        details = {
            "file": path.name,
            "n_ctx": n_ctx,
            "parallel": spec.parallel,
            "prompt_cache_mib": spec.prompt_cache_mib if batched and spec.prefix_cache else 0,
            **threads.as_details(),  # n_threads, threads_mode, threads_why, omp_wait_policy
            **({"threads_why": f"{threads.why}; each decode takes the cores other processes leave (1 to "
                               f"{threads.threads})", "n_threads_now": threads.threads} if self._adaptive else {}),
            "n_gpu_layers": n_gpu_layers,
            "gpu_offload_supported": gpu_offload,
            "n_params": int(llm._model.n_params()),
            "weights_bytes": weights,
            "kv_cache_bytes": kv_bytes,
            "kv_cache_type": kv_type,
            "flash_attn": flash_attn_shown(llm, kv_opts["flash_attn"]),  # "auto: on", "on" or "off"
            "chat_template": "gguf" if meta.get("tokenizer.chat_template") else "chatml (fallback)",
            "vision": self._vision is not None,  # sees pictures (its projector, mmproj, is loaded)
            **({"mmproj": self._vision.path.name,  # the projector stays at its own type in every variant
                "projector": f"{self._vision.path.name} ({gguf.gguf_file_type(self._vision.path) or '?'})"}
               if self._vision is not None else {}),
            # which of a Hub repo's projectors came with it, and why (backends/files/hub_projector.py)
            **({"mmproj_from": projector_note} if projector_note and self._vision is not None else {}),
        }
        self._spec_stats = SpecStats()
        self._speculative = None
        if spec.speculative is not None:
            import llama_cpp as L

            details["spec_draft_tokens"] = spec.spec_draft_tokens
            if L.llama_model_is_recurrent(llm._model.model) or L.llama_model_is_hybrid(llm._model.model):
                details["speculative"] = None
                details["speculative_note"] = (f"Speculative decoding ({spec.speculative}) needs a KV cache that can "
                                               "drop rejected draft tokens; this model's recurrent state cannot: off.")
            else:
                self._speculative = details["speculative"] = spec.speculative
                details["spec_drafted_tokens"] = details["spec_accepted_tokens"] = 0
        self._details = details
        if asked and not gpu_offload:  # asked for GPU layers on a CPU build: say so instead of failing
            details["warning"] = "This llama.cpp build has no GPU support: running on the CPU."
        return LoadedModel(
            name=spec.served_name or path.stem,
            backend=self.name,
            quantization=own_type,
            source=str(path),
            context_length=n_ctx,
            footprint_bytes=weights + kv_bytes,
            load_seconds=time.perf_counter() - t0,
            device="cuda" if n_gpu_layers and gpu_offload else "cpu",
            details=details,
        )

    def _threads_changed(self, n: int, others: float) -> None:
        """Auto threads moved (another process took or gave back CPU): /health shows it."""
        self._details["n_threads_now"] = n
        self._details["cpu_others_cores"] = others

    @property
    def max_concurrency(self) -> int:
        return self._engine.slots if self._engine is not None else 1

    def cache_bytes(self) -> int:
        engine = self._engine
        return engine.host_cache.bytes if engine is not None else 0

    def unload(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        with self._embed_lock:
            if self._embedder is not None:
                self._embedder.close()
                self._embedder = None
        with self._lock:
            if self._vision is not None:
                self._vision.close()
                self._vision = None
            for llm in (self._llm, self._logits_llm):
                if llm is not None:
                    llm.close()
            self._llm = self._logits_llm = self._template = None
        release_memory()

    # --- generation ------------------------------------------------------------------------------

    def prompt_tokens(self, request: ChatRequest) -> list[int]:
        """The prompt's tokens: a raw ``prompt`` tokenized as is (BOS as the model asks, special tokens
        parsed), else the messages rendered with the chat template (which writes its own BOS)."""
        llm = self._require()
        if request.prompt is not None:
            return llm.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=True)
        rendered = self._template.render(request)
        return llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        return self.prompt_tokens(request)

    def count_prompt_tokens(self, request: ChatRequest) -> int:
        if request.images:
            with self._media_prompt(request) as media:
                return media.n_tokens
        return len(self.prompt_tokens(request))

    def _media_prompt(self, request: ChatRequest):
        """The prompt of a request with pictures, as mtmd chunks (``llamacpp_vision``)."""
        self._require()
        if self._vision is None:
            raise InvalidRequest("This model is text-only (no vision projector, mmproj, is loaded): it cannot read "
                                 "images.", "messages")
        return self._vision.prompt(self._template.render(request), request.images)

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[TextDelta]:
        import llama_cpp as L

        llm = self._require()
        if self._engine is not None:
            yield from self._stream_batched(request, cancel)
            return
        if request.images:
            yield from self._stream_media(llm, request, cancel)
            return
        with self._lock:
            tokens = self.prompt_tokens(request)
            n_prompt, n_ctx = len(tokens), llm.n_ctx()
            check_prompt_tokens(request, n_prompt, n_ctx)
            budget = min(request.params.max_new_tokens, n_ctx - n_prompt)
            sampler = sampler_for(L, llm, request, n_ctx)  # an invalid constraint is refused here
            try:
                yield TextDelta("", prompt_tokens=n_prompt)  # known before the first token, even if cancelled
                if self._speculative_for(request):
                    stats = SpecStats()
                    try:
                        finish = yield from self._generate_speculative(llm, tokens, sampler, budget, request.logprobs,
                                                                       cancel, stats)
                    finally:
                        self._count(stats)
                    yield TextDelta("", finish_reason=finish, prompt_tokens=n_prompt,
                                    draft_tokens=stats.drafted, accepted_tokens=stats.accepted)
                    return
                finish = yield from self._generate(llm, tokens, sampler, budget, request.logprobs, cancel)
            finally:
                L.llama_sampler_free(sampler)
            yield TextDelta("", finish_reason=finish, prompt_tokens=n_prompt)

    def _stream_media(self, llm, request: ChatRequest, cancel: threading.Event) -> Iterator[TextDelta]:
        """``stream`` for a prompt with pictures, one slot: the chunks are evaluated into the model's
        context from position 0 (no cached prefix), then tokens are drawn as for text."""
        import llama_cpp as L

        with self._lock, self._media_prompt(request) as media:
            n_ctx = llm.n_ctx()
            check_prompt_tokens(request, max(media.n_tokens, media.n_pos), n_ctx)
            budget = min(request.params.max_new_tokens, n_ctx - media.n_pos)
            sampler = sampler_for(L, llm, request, n_ctx)
            try:
                yield TextDelta("", prompt_tokens=media.n_tokens)
                llm.reset()
                llm._ctx.kv_cache_seq_rm(-1, 0, -1)
                self._sync_threads()
                n_past = compute.run(media.eval, llm._ctx.ctx, 0, 0, llm.n_batch)
                llm.input_ids[:n_past] = -1  # cells no token stands for: never a reusable prefix
                llm.n_tokens = n_past
                finish = yield from self._generate(llm, [], sampler, budget, request.logprobs, cancel, prefilled=True)
            finally:
                L.llama_sampler_free(sampler)
            yield TextDelta("", finish_reason=finish, prompt_tokens=media.n_tokens)

    def _speculative_for(self, request: ChatRequest) -> bool:
        """Speculative decoding for this request: loaded with it, and a greedy request (a sampled one
        decodes plainly, exactly as without the option)."""
        return self._speculative == "ngram" and request.params.greedy

    def _count(self, stats: SpecStats) -> None:
        with self._count_lock:  # batched requests finish on their own threads
            self._spec_stats.add(stats.drafted, stats.accepted)
            self._details["spec_drafted_tokens"] = self._spec_stats.drafted
            self._details["spec_accepted_tokens"] = self._spec_stats.accepted

    def _generate(self, llm, tokens: list[int], sampler, budget: int, logprobs: int | None,
                  cancel: threading.Event, prefilled: bool = False) -> Iterator[TextDelta]:
        """Evaluate ``tokens`` (reusing the KV prefix the context already holds; ``prefilled``: the
        prompt is evaluated already) and draw up to ``budget`` tokens; returns the finish reason.
        Holds ``self._lock``."""
        import llama_cpp as L

        ctx, vocab = llm._ctx.ctx, llm._model.vocab
        n_vocab = L.llama_vocab_n_tokens(vocab)
        if not prefilled:
            self._prefill(llm, tokens, self._spec is None or self._spec.prefix_cache)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generated, finish = 0, "length"
        while generated < budget:
            if cancel.is_set():
                finish = "cancelled"
                break
            token = L.llama_sampler_sample(sampler, ctx, -1)
            if L.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            lp = () if logprobs is None else (token_logprob(L, ctx, -1, token, n_vocab, logprobs, self._piece),)
            generated += 1
            yield TextDelta(decoder.decode(detokenize_bytes(llm, [token], special=False)), tokens=1, logprobs=lp)
            if generated < budget:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                self._sync_threads()
                compute.run(llm.eval, [token])
        tail = decoder.decode(b"", final=True)
        if tail:
            yield TextDelta(tail)
        return finish

    def _prefill(self, llm, tokens: list[int], reuse_prefix: bool = True) -> None:
        """Evaluate ``tokens`` on ``llm``'s context, reusing the KV prefix it already holds (unless
        ``reuse_prefix`` is off: the lab's variants, where the same prompt must give the same text)."""
        held = llm.input_ids[:llm.n_tokens]
        same = 0
        for a, b in zip(held, tokens):
            if a != b:
                break
            same += 1
        reuse = min(same, len(tokens) - 1) if reuse_prefix else 0  # the last prompt token is evaluated
        if reuse == 0 or not llm._ctx.kv_cache_seq_rm(-1, reuse, -1):
            llm.reset()
            reuse = 0
        llm.n_tokens = reuse
        self._sync_threads()
        compute.run(llm.eval, tokens[reuse:])

    def _generate_speculative(self, llm, tokens: list[int], sampler, budget: int, logprobs: int | None,
                              cancel: threading.Event, stats: SpecStats) -> Iterator[TextDelta]:
        """``_generate`` for a greedy request with n-gram drafts verified in one decode each (see the
        module docstring); the same tokens, fewer decode calls when the reply repeats its input."""
        import llama_cpp as L

        ctx, vocab = llm._ctx.ctx, llm._model.vocab
        n_vocab = L.llama_vocab_n_tokens(vocab)
        n_ctx, k_max = llm.n_ctx(), self._spec.spec_draft_tokens
        self._prefill(llm, tokens, self._spec is None or self._spec.prefix_cache)
        drafter = NgramDrafter(tokens)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generated, finish = 0, "length"
        k_cur = k_max  # draft length, adapted as transformers' assisted generation does: +2 after a fully
        # accepted draft, -1 after a rejection (verifying a long draft that fails early costs time)

        def accept(token: int, idx: int) -> TextDelta | None:
            """The delta of a token the reply keeps (counted, fed to the drafter), or None when it ends
            the reply (end of generation)."""
            nonlocal generated
            if L.llama_vocab_is_eog(vocab, token):
                return None
            generated += 1
            drafter.extend((token,))
            lp = () if logprobs is None else (token_logprob(L, ctx, idx, token, n_vocab, logprobs, self._piece),)
            return TextDelta(decoder.decode(detokenize_bytes(llm, [token], special=False)), tokens=1, logprobs=lp)

        token, idx = L.llama_sampler_sample(sampler, ctx, -1), -1
        while True:
            if cancel.is_set():
                finish = "cancelled"
                break
            delta = accept(token, idx)
            if delta is None:
                finish = "stop"
                break
            yield delta
            if generated >= budget:
                break
            if cancel.is_set():
                finish = "cancelled"
                break
            # room: every draft token accepted plus the pick after them must stay within the budget
            draft = drafter.draft(min(k_cur, budget - generated - 1, n_ctx - llm.n_tokens - 1))
            batch = [token, *draft]
            n_past = llm.n_tokens
            llm._batch.set_batch(batch=batch, n_past=n_past, logits_all=True)
            self._sync_threads()
            compute.run(llm._ctx.decode, llm._batch)
            llm.input_ids[n_past:n_past + len(batch)] = batch
            llm.n_tokens = n_past + len(batch)  # what the KV holds, should the consumer leave mid-way
            stats.drafted += len(draft)
            stop = None
            for i in range(len(batch)):
                token, idx = L.llama_sampler_sample(sampler, ctx, i), i
                if i == len(draft) or token != draft[i]:
                    break  # the model's pick after the accepted drafts: the next step's token
                stats.accepted += 1
                delta = accept(token, i)
                if delta is None:
                    stop = "stop"
                    break
                yield delta
                if cancel.is_set():
                    stop = "cancelled"
                    break
            if draft:
                k_cur = min(k_max, k_cur + 2) if i == len(draft) else max(1, k_cur - 1)
            # keep the cells of the last token and the accepted drafts; drop the rejected ones
            keep = n_past + 1 + (i if stop is None else i + 1)
            if keep < llm.n_tokens:
                llm._ctx.kv_cache_seq_rm(-1, keep, -1)
                llm.n_tokens = keep
            if stop is not None:
                finish = stop
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            yield TextDelta(tail)
        return finish

    def _piece(self, token: int) -> bytes:
        return self._llm.detokenize([token], special=True)

    def _stream_batched(self, request: ChatRequest, cancel: threading.Event) -> Iterator[TextDelta]:
        import llama_cpp as L

        media = self._media_prompt(request) if request.images else None
        try:
            # a prompt with pictures: a placeholder token per position (the engine evaluates the chunks)
            tokens = self.prompt_tokens(request) if media is None else [-1] * media.n_pos
            n_ctx = self._engine.n_ctx_per_seq
            check_prompt_tokens(request, len(tokens), n_ctx)
            budget = min(request.params.max_new_tokens, n_ctx - len(tokens))
            sampler = sampler_for(L, self._llm, request, n_ctx)  # the engine owns (and frees) it from here
        except BaseException:
            if media is not None:
                media.close()
            raise
        n_prompt = media.n_tokens if media is not None else len(tokens)
        draft = self._spec.spec_draft_tokens if self._speculative_for(request) and media is None else 0
        # the engine owns ``media`` from here too (frees its chunks once evaluated or dropped)
        for delta in self._engine.submit(tokens, sampler, budget, cancel, logprobs=request.logprobs,
                                         draft_tokens=draft, media=media):
            if delta.finish_reason and draft:
                stats = SpecStats()
                stats.add(delta.draft_tokens, delta.accepted_tokens)
                self._count(stats)
            if delta.prompt_tokens and delta.prompt_tokens != n_prompt:
                delta = replace(delta, prompt_tokens=n_prompt)
            yield delta

    def tokenize(self, text: str) -> list[int]:
        return self._require().tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """Token ids back to text (special tokens written out, as llama-server's /detokenize does)."""
        llm = self._require()
        n_vocab = llm.n_vocab()
        ids = list(token_ids)
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_vocab:
                raise InvalidRequest(f"Token id {t!r} is not in this model's vocabulary (0..{n_vocab - 1}).", "tokens")
        return detokenize_bytes(llm, ids, special=True).decode("utf-8", errors="replace")

    def embed(self, texts: Sequence[str], cancel: threading.Event | None = None,
              on_input: Callable[[int], None] | None = None) -> list[list[float]]:
        """L2-normalised embeddings from a second context on the same model (made on first use);
        stops between inputs once ``cancel`` is set."""
        llm = self._require()
        with self._embed_lock:
            if self._embedder is None:
                from backends.llamacpp.embed import Embedder

                self._embedder = Embedder(llm, min(self._spec.n_ctx, llm._model.n_ctx_train(), EMBED_MAX_TOKENS))
            embedder = self._embedder
        return embedder.embed(texts, cancel, on_input)

    def logits(self, token_ids: Sequence[int]):
        """Logits at every position, from a second context created with logits_all=True (the
        chat context keeps logits off, which is what makes generation fast)."""
        import numpy as np

        self._require()
        with self._lock:
            if self._logits_llm is None:
                self._logits_llm = open_llama(
                    str(self._path), n_ctx=max(len(token_ids), 512), logits_all=True,
                    n_threads=self._threads.threads, n_threads_batch=self._threads.threads,
                    n_gpu_layers=self._n_gpu_layers,
                    verbose=False,
                    **kv_cache_options(self._spec),  # scored through the same KV cache type as the chat
                )
            lg = self._logits_llm
            if len(token_ids) > lg.n_ctx():
                raise ContextLengthExceeded(f"{len(token_ids)} tokens do not fit the {lg.n_ctx()}-token context.")
            lg.reset()
            compute.run(lg.eval, list(token_ids))
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
