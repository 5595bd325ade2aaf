"""Hugging Face transformers models, optionally quantized with bitsandbytes, torchao or optimum-quanto
(those two: backends/hf/quant.py).

``generate`` runs in a worker thread (the continuous batch's generation thread when a batcher is
alive, so the process keeps one OpenMP team: ``transformers_loop_calls``): its token ids come back
through a queue, an exception in the thread is re-raised on the consumer side (a plain
TextIteratorStreamer would hang), and a stopping criterion tied to the cancel event stops it within
one token.

With ``spec.speculative == "ngram"``, greedy requests without a constraint or logprobs run on
generate() with prompt lookup (``transformers_speculative``), also when continuous batching is on
(generate() then takes the model from the batch while it runs, as every generate() request does);
the final delta carries the drafted / accepted counts.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from backends.files import sources
from backends.base import Backend, ChatRequest, LoadedModel, ModelSpec, Progress, TextDelta, _no_progress, check_prompt_tokens
from backends.errors import (
    InvalidRequest,
    ModelLoadError,
    NoModelLoaded,
    OutOfMemory,
    UnsupportedQuantization,
)
from backends.files.hf_convert import hf_checkpoint_from_gguf
from backends.files.hf_to_gguf import is_multimodal
from backends.files import gguf
from backends.hf import quant as transformers_quant
from backends.memory import release_memory
from backends.slots import SharedExclusive
from backends.speculative import SpecStats, check_speculative
from backends.threads import AdaptiveThreads
from backends.threads import choose as choose_threads

log = logging.getLogger(__name__)
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_END = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _Row:
    """A step's log-softmax from the logprob tap, queued just before that step's token."""

    def __init__(self, row):
        self.row = row


class IncrementalDecoder:
    """Text of newly generated tokens without re-decoding the whole reply each step (the
    prefix/read offset scheme of TGI and vLLM). Holds back text ending in an incomplete character."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        new_text = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        prefix_text = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        new_text = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        self.prefix = self.read = len(self.ids)
        return new_text[len(prefix_text):]


def bnb_support() -> dict[str, bool]:
    """Which bitsandbytes quantizations work on this machine's default device."""
    try:
        import bitsandbytes  # noqa: F401
        import torch
    except Exception:  # ImportError or a broken native library
        return {"int8": False, "nf4": False, "fp4": False}
    on_gpu = torch.cuda.is_available()
    # bitsandbytes >= 0.48 ships CPU kernels for LLM.int8 and the 4-bit types.
    return {"int8": True, "nf4": True, "fp4": True} if on_gpu or _bnb_cpu_ok() else {"int8": False, "nf4": False, "fp4": False}


def _bnb_cpu_ok() -> bool:
    try:
        import bitsandbytes as bnb
        import torch

        w = torch.randn(64, 64)
        q, state = bnb.functional.quantize_4bit(w, quant_type="nf4")
        return q is not None and state is not None
    except Exception:
        return False


class TransformersBackend(Backend):
    name = "transformers"
    capabilities = frozenset({"stream", "logits", "tokenize", "files"})
    quantizations = ("fp32", "bf16", "fp16", "int8", "nf4", "fp4", *transformers_quant.METHODS)
    default_quantization = "bf16"
    # DRY, XTC and mirostat have no transformers implementation: refused by name (Backend.check_request)
    samplers = frozenset({"min_p", "typical_p", "presence_penalty", "frequency_penalty", "no_repeat_ngram_size"})
    features = frozenset({"prompt", "continue_final", "tools", "constraint", "logprobs", "vision"})

    def __init__(self, cache_dir: Path | None = None):
        self._cache_dir = cache_dir or sources.default_cache_dir()
        self._model = None
        self._tok = None
        self._processor = None  # a vision model's AutoProcessor (backends/hf/vision.py); None: text only
        self._lock = threading.Lock()
        self._max_ctx = 2048
        self._device = "cpu"
        self._batcher = None  # ContinuousBatcher when spec.parallel > 1 and the model supports it
        # generate() and the batch manager must never run the model at the same time: a generate() that
        # overlapped a batch step left the model producing garbage for later generate() calls (seen with
        # transformers 5.23, fp32, sdpa). The batch shares; a generate() beside it is exclusive.
        self._paths = SharedExclusive()
        self._grammars = None  # transformers_constraint.Grammars, made on the first constrained request
        self._texts = None  # transformers_logprobs.TokenTexts
        self._quant = "fp32"
        self._speculative: str | None = None  # "ngram": prompt lookup for greedy requests; None: off
        self._draft_tokens = 0
        self._spec_stats = SpecStats()  # drafted/accepted tokens since load
        self._details: dict = {}
        self._threads = None  # ThreadChoice made at load; set on every thread that computes for this model
        self._adaptive = None  # AdaptiveThreads with auto on the CPU

    # --- lifecycle -------------------------------------------------------------------------------

    def _checkpoint(self, spec: ModelSpec, progress: Progress) -> Path:
        path = sources.resolve(spec.source, gguf_file=spec.gguf_file, progress=sources.scaled(progress, 0.0, 0.1))
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelLoadError(f"{path.name} is not a model: give a checkpoint folder, a GGUF file or a repo id.")
            gguf.check_gguf(path)
            return hf_checkpoint_from_gguf(path, self._cache_dir, progress)
        if (path / "config.json").exists():
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return hf_checkpoint_from_gguf(sources.find_gguf(path, spec.gguf_file), self._cache_dir, progress)
        raise ModelLoadError(f"{path.name}/ has no config.json: it is not a transformers checkpoint.")

    def load(self, spec: ModelSpec, progress: Progress = _no_progress) -> LoadedModel:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-tensor bars flood the server log
        t0 = time.perf_counter()
        check_speculative(spec)
        threads = choose_threads(spec.n_threads)
        quant = self.normalize_quantization(spec.quantization)
        on_gpu = torch.cuda.is_available()
        device_map = spec.device_map or ("auto" if on_gpu else "cpu")
        if quant in ("int8", "nf4", "fp4") and not bnb_support()[quant]:
            raise UnsupportedQuantization(f"bitsandbytes {quant} is not available on this machine.")
        if transformers_quant.is_method(quant):
            transformers_quant.check(quant, on_gpu)
        if quant == "bf16" and not on_gpu and not _cpu_bf16_ok(torch):
            raise UnsupportedQuantization("This CPU cannot run bf16: choose fp32.")
        path = self._checkpoint(spec, progress)
        progress(0.5, f"Loading {path.name} at {quant}")
        kwargs: dict = {"device_map": device_map, "trust_remote_code": spec.trust_remote_code}
        if quant in _DTYPES:
            kwargs["dtype"] = getattr(torch, _DTYPES[quant])
        elif transformers_quant.is_method(quant):
            kwargs["dtype"] = torch.float32 if not on_gpu else torch.bfloat16
            kwargs["quantization_config"] = transformers_quant.config(quant)
        elif quant == "int8":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=spec.cpu_offload
            )
        else:
            compute = getattr(torch, _DTYPES.get(spec.compute_dtype, spec.compute_dtype), None)
            if not isinstance(compute, torch.dtype):
                raise InvalidRequest(f"Unknown compute dtype {spec.compute_dtype!r}.", "compute_dtype")
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=quant,
                bnb_4bit_use_double_quant=spec.double_quant,
                bnb_4bit_compute_dtype=compute,
            )
        vision = is_multimodal(path)
        processor = None
        try:
            if vision:  # a vision-language checkpoint: the whole model and its processor (pictures)
                from transformers import AutoModelForImageTextToText, AutoProcessor

                model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
                processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=spec.trust_remote_code)
                tok = processor.tokenizer
                if tok.chat_template is None:
                    tok.chat_template = processor.chat_template
            else:
                model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
                tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=spec.trust_remote_code)
        except torch.cuda.OutOfMemoryError as exc:
            raise OutOfMemory(f"Not enough GPU memory for {path.name} at {quant}: try a smaller quantization.") from exc
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            raise ModelLoadError(f"transformers could not load {path.name} at {quant}: {exc}") from exc
        model.eval()
        if tok.chat_template is None:
            raise ModelLoadError(f"{path.name} has no chat template: this app serves chat models.")
        self._model, self._tok, self._processor = model, tok, processor
        self._quant = quant
        self._threads = threads
        self._adaptive = (AdaptiveThreads(threads.threads) if threads.mode == "auto" and threads.threads > 1
                          and not on_gpu else None)
        # torchao/quanto weights are tensor subclasses that get_memory_footprint counts at float size
        weights = (transformers_quant.weights_bytes(model) if transformers_quant.is_method(quant)
                   else int(model.get_memory_footprint()))
        cfg = model.config
        self._max_ctx = int(getattr(cfg, "max_position_embeddings", None) or tok.model_max_length or 2048)
        self._max_ctx = min(self._max_ctx, spec.n_ctx) if spec.n_ctx else self._max_ctx
        self._device = str(next(model.parameters()).device)
        batching = ("off (vision model: one request at a time)" if vision else
                    self._start_batching(spec, model, tok) if spec.parallel > 1 else "off (parallel=1)")
        self._speculative, self._draft_tokens = spec.speculative, spec.spec_draft_tokens
        self._spec_stats = SpecStats()
        speculative = {} if spec.speculative is None else {
            "speculative": spec.speculative, "spec_draft_tokens": spec.spec_draft_tokens,
            "spec_drafted_tokens": 0, "spec_accepted_tokens": 0}  # the totals grow as requests finish
        progress(1.0, "Loaded")
        loaded = LoadedModel(
            name=spec.served_name or path.name,
            backend=self.name,
            quantization=quant,
            source=str(path),
            context_length=self._max_ctx,
            footprint_bytes=weights + (self._batcher.kv_bytes if self._batcher else 0),
            load_seconds=time.perf_counter() - t0,
            device=self._device,
            details={
                "weights_bytes": weights,
                **speculative,
                "n_params": int(sum(p.numel() for p in model.parameters())),
                "device_map": device_map,
                "dtype": str(getattr(model, "dtype", "")).replace("torch.", ""),
                "trust_remote_code": spec.trust_remote_code,
                "batching": batching,
                "vision": vision,  # sees pictures (AutoModelForImageTextToText and its processor)
                **threads.as_details(),  # n_threads, threads_mode, threads_why, omp_wait_policy
                **({"threads_why": f"{threads.why}; each step takes the cores other processes leave (1 to "
                                   f"{threads.threads})"} if self._adaptive else {}),
                **({"kv_cache_bytes": self._batcher.kv_bytes} if self._batcher else {}),
                **({"double_quant": spec.double_quant, "compute_dtype": spec.compute_dtype} if quant in ("nf4", "fp4") else {}),
            },
        )
        self._details = loaded.details
        return loaded

    def _use_threads(self) -> None:
        """torch's thread count for this model, on the calling thread. torch keeps one per thread once
        that thread has computed (its OpenMP team's size): each thread that computes for this model sets
        it first, so a second model loaded with another count does not change this one's. With auto on the
        CPU the count follows the cores other processes leave (``backends.threads.AdaptiveThreads``); it is
        called before every step of a generation."""
        import torch

        if self._threads is None:
            return
        n = self._adaptive.now() if self._adaptive is not None else self._threads.threads
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def _start_batching(self, spec: ModelSpec, model, tok) -> str:
        """Continuous batching through transformers' own manager; a model or quantization it cannot run
        keeps the one-at-a-time path (said in the load details, never a failed load)."""
        from backends.hf.batch import ContinuousBatcher

        try:
            self._batcher = ContinuousBatcher(model, spec.parallel, self._max_ctx, _eos_ids(model, tok),
                                              prefix_cache=spec.prefix_cache, on_thread=self._use_threads,
                                              grad_mode=functools.partial(transformers_quant.grad_mode, self._quant))
        except Exception as exc:  # an attention implementation or cache layout the manager rejects
            log.warning("continuous batching unavailable for this model, generating one at a time: %s", exc)
            self._batcher = None
            return f"off ({type(exc).__name__}: {exc})"
        return f"continuous ({spec.parallel} slots)"

    @property
    def max_concurrency(self) -> int:
        return self._batcher.slots if self._batcher is not None else 1

    def unload(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()
        with self._lock:
            self._model = self._tok = self._processor = None
        release_memory()

    # --- generation ------------------------------------------------------------------------------

    def _require(self):
        if self._model is None:
            raise NoModelLoaded()
        return self._model, self._tok

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The raw prompt's tokens, or the messages through the chat template (tools, continue, kwargs)."""
        from backends.hf.chat import prompt_ids

        _, tok = self._require()
        return prompt_ids(tok, request)

    def count_prompt_tokens(self, request: ChatRequest) -> int:
        return len(self._inputs(request)[0])

    def _inputs(self, request: ChatRequest) -> tuple[list[int], dict]:
        """The prompt's token ids and, for pictures, the processor's other model inputs."""
        if not request.images:
            return self.prompt_ids(request), {}
        from backends.hf.vision import vision_inputs

        self._require()
        if self._processor is None:
            raise InvalidRequest("This model is text-only (no vision capability): it cannot read images.", "messages")
        return vision_inputs(self._processor, request)

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[TextDelta]:
        self._require()
        params = request.params
        ids, pictures = self._inputs(request)
        n_prompt = len(ids)
        check_prompt_tokens(request, n_prompt, self._max_ctx)
        budget = min(params.max_new_tokens, self._max_ctx - n_prompt)
        constraint = self._constraint(request, n_prompt)  # a bad schema or grammar fails before any output
        yield TextDelta("", prompt_tokens=n_prompt)  # known before the first token, even if cancelled
        batcher = self._batcher
        draft = self._draft_tokens if self._speculative_for(request) else 0
        # The batch runs temperature/top-k/top-p per request; constraints, logprobs, the other samplers
        # and speculative decoding run on generate() (the two paths take turns on the model).
        if (batcher is not None and not draft and batcher.accepts(params) and request.constraint is None
                and request.logprobs is None and not pictures):
            yield from self._stream_batched(batcher, ids, budget, params, cancel)
        else:
            yield from self._stream_generate(ids, budget, params, cancel, request, constraint,
                                             draft if not pictures else 0, pictures)

    def _speculative_for(self, request: ChatRequest) -> bool:
        """Prompt lookup for this request: loaded with it, greedy, no constraint or logprobs (generate()
        runs those processors once per verified position, which a grammar's state does not expect)."""
        return (self._speculative == "ngram" and request.params.greedy and request.constraint is None
                and request.logprobs is None)

    def _count(self, drafted: int, accepted: int) -> None:
        """Add a request's counts to the load's totals (called holding ``self._lock``)."""
        self._spec_stats.add(drafted, accepted)
        self._details["spec_drafted_tokens"] = self._spec_stats.drafted
        self._details["spec_accepted_tokens"] = self._spec_stats.accepted

    def _constraint(self, request: ChatRequest, n_prompt: int):
        """The logits processor that holds the output to ``request.constraint`` (None without one)."""
        if request.constraint is None:
            return None
        from backends.hf.constraint import Grammars

        model, tok = self._require()
        if self._grammars is None:
            self._grammars = Grammars(tok, int(model.config.get_text_config().vocab_size), _eos_ids(model, tok))
        return self._grammars.processor(request.constraint, n_prompt)

    def _stream_generate(self, ids: list[int], budget: int, params, cancel: threading.Event,
                         request: ChatRequest | None = None, constraint=None,
                         draft_tokens: int = 0, pictures: dict | None = None) -> Iterator[TextDelta]:
        """One request at a time: generate() in a worker thread, under the model's lock; with
        ``draft_tokens``, prompt lookup drafting up to that many tokens per forward pass; ``pictures``:
        a vision model's pixel inputs (``transformers_vision``)."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        from backends.hf.sampling import generate_kwargs, processors
        from backends.hf.speculative import DraftCounter
        from backends.hf.speculative import generate_kwargs as speculative_kwargs

        model, tok = self._require()
        n_prompt = len(ids)
        q: queue.Queue = queue.Queue()
        top_n = request.logprobs if request is not None else None
        if top_n is not None and self._texts is None:
            from backends.hf.logprobs import TokenTexts

            self._texts = TokenTexts(tok)
        tap = (lambda row: q.put(_Row(row))) if top_n is not None else None
        extras = processors(params, n_prompt, constraint, tap)
        counter = DraftCounter() if draft_tokens else None
        if counter is not None:
            extras.append(counter)

        class _Streamer(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:  # generate() puts the prompt first
                    self.first = False
                    return
                tokens = value.reshape(-1).tolist()
                if counter is not None:
                    counter.step(len(tokens))
                for t in tokens:
                    q.put(t)

            def end(self):
                q.put(_END)

        use_threads = self._use_threads

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                use_threads()  # after each step, for the next: the model's threads (auto: adapted)
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        eos = _eos_ids(model, tok)
        gen_kwargs = dict(
            input_ids=torch.tensor([ids], device=self._device),
            attention_mask=torch.ones((1, n_prompt), dtype=torch.long, device=self._device),
            max_new_tokens=budget,
            streamer=_Streamer(),
            stopping_criteria=StoppingCriteriaList([_Cancel()]),
            eos_token_id=eos,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
            logits_processor=LogitsProcessorList(extras),
            **generate_kwargs(params),
            **(speculative_kwargs(draft_tokens) if draft_tokens else {}),
        )
        for key, value in (pictures or {}).items():  # pixel values in the model's dtype, on its device
            value = value.to(self._device)
            gen_kwargs[key] = value.to(model.dtype) if value.is_floating_point() else value

        def run():
            try:
                self._use_threads()  # this thread's torch threads are this model's (never another engine's)
                with transformers_quant.grad_mode(self._quant):
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    model.generate(**gen_kwargs)
            except BaseException as exc:  # forwarded to the consumer, never lost
                q.put(_Failed(exc))
                q.put(_END)

        with self._lock:
            self._paths.acquire_exclusive()
            done = self._start_generate(run)
            decoder = IncrementalDecoder(tok)
            generated, finish = 0, "length"
            row = None  # the logprob tap's row for the next token (it comes before the token)
            try:
                while True:
                    item = q.get()
                    if item is _END:
                        break
                    if isinstance(item, _Failed):
                        raise _translate(item.exc) from item.exc
                    if isinstance(item, _Row):
                        row = item.row
                        continue
                    if item in eos:
                        finish = "stop"
                        continue
                    generated += 1
                    text = decoder.push(item)
                    lp = (self._texts.logprob(row, item, top_n),) if top_n is not None and row is not None else ()
                    yield TextDelta(text, tokens=1, logprobs=lp)
                if cancel.is_set() and finish != "stop":
                    finish = "cancelled"
                elif generated < budget and finish != "stop":
                    finish = "stop"
            finally:
                cancel.set()  # stops generate() if the consumer went away
                done()
                self._paths.release_exclusive()
                if counter is not None:
                    self._count(counter.drafted, counter.accepted)
            spec = {"draft_tokens": counter.drafted, "accepted_tokens": counter.accepted} if counter else {}
            yield TextDelta(decoder.flush(), finish_reason=finish, prompt_tokens=n_prompt, **spec)

    def _start_generate(self, run: Callable[[], None]) -> Callable[[], None]:
        """Start ``run`` (one generate(), under the exclusive path); returns what waits for its end.

        With a batcher alive it runs on the batcher's generation thread, between steps (none is running):
        a thread of its own would build a second OpenMP team beside that thread's, and libgomp, with more
        threads than CPUs, throttles both, which halved this generate() on 2 cores
        (``transformers_loop_calls``). Without one (or once its thread has ended) a short-lived thread
        runs it; its team goes with it."""
        batcher = self._batcher
        future = batcher.submit(run) if batcher is not None else None
        if future is not None:
            return future.result
        worker = threading.Thread(target=run, name="hf-generate", daemon=True)
        worker.start()
        return worker.join

    def _stream_batched(self, batcher, ids, budget, params, cancel) -> Iterator[TextDelta]:
        decoder = IncrementalDecoder(self._tok)
        finish = "stop"
        self._paths.acquire_shared()
        try:
            for token, reason in batcher.stream(ids, params, budget, cancel):
                if token is None:
                    finish = reason
                    break
                yield TextDelta(decoder.push(token), tokens=1)
        except Exception as exc:
            raise _translate(exc) from exc
        finally:
            self._paths.release_shared()
        yield TextDelta(decoder.flush(), finish_reason=finish, prompt_tokens=len(ids))

    def tokenize(self, text: str) -> list[int]:
        _, tok = self._require()
        return list(tok(text, add_special_tokens=True)["input_ids"])

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids``, special tokens written out (llama-server's /detokenize)."""
        model, tok = self._require()
        n_vocab = max(len(tok), int(model.config.get_text_config().vocab_size))
        try:
            ids = [int(t) for t in token_ids]
        except (TypeError, ValueError) as exc:
            raise InvalidRequest("Token ids must be integers.", "tokens") from exc
        bad = [t for t in ids if not 0 <= t < n_vocab]
        if bad:
            raise InvalidRequest(f"Token id {bad[0]} is outside this model's vocabulary (0..{n_vocab - 1}).", "tokens")
        return tok.decode(ids, skip_special_tokens=False)

    def logits(self, token_ids: Sequence[int]):
        import torch

        model, _ = self._require()
        with self._lock, transformers_quant.grad_mode(self._quant):
            self._use_threads()  # the caller's thread computes: with this model's thread count
            out = model(torch.tensor([list(token_ids)], device=self._device)).logits[0]
            return out.float().cpu().numpy()


def _eos_ids(model, tok) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tok.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return [i for i in ids if i is not None]


def _cpu_bf16_ok(torch) -> bool:
    try:
        return bool((torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)).sum() == 8)
    except RuntimeError:
        return False


def _translate(exc: BaseException) -> BaseException:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return OutOfMemory("The GPU ran out of memory while generating: lower max_new_tokens or the context.")
    except ImportError:  # pragma: no cover
        pass
    from backends.errors import BackendError

    if isinstance(exc, BackendError):
        return exc
    return BackendError(f"Generation failed: {type(exc).__name__}: {exc}")
