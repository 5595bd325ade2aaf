"""Continuous batching for the transformers backend, on transformers' own ContinuousBatchingManager.

The manager owns a paged KV cache and one generation thread that steps every running request in one
forward pass; requests join and leave between steps. This module adapts it to the backend's
``stream()`` contract: a dispatcher thread reads the manager's shared output queue and routes each
streamed result to its request's own queue (the manager's ``request_id_iter`` re-queues foreign
results, which churns with many readers), cancellation goes through ``cancel_request``, and a
generation thread that dies fails every waiting request instead of hanging it.

Per-request sampling uses the manager's per-request logits processors (temperature, top-k, top-p),
top-k and top-p swapped for faster ones that also draw the token (``transformers_batch_sampling``).
Greedy is top-k 1. What the manager cannot do per request (repetition penalty, a seed for sampled
text) is reported by ``accepts`` so the backend runs that request on its unbatched path, whose
generate() it hands to ``submit``: it runs on the generation thread between steps, so torch's OpenMP
keeps one team in the process (``transformers_loop_calls``).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager

from backends.base import SamplingParams
from backends.errors import BackendError
from backends.hf.loop_calls import LoopCalls

PAGE_SIZE = 64  # tokens per KV page: small pages waste less on short chats
_POLL_S = 0.25


class ContinuousBatcher:
    def __init__(self, model, slots: int, n_ctx: int, eos: Sequence[int], prefix_cache: bool = True,
                 grad_mode: Callable[[], AbstractContextManager] | None = None,
                 on_thread: Callable[[], None] = lambda: None):
        """``grad_mode`` makes the no-autograd context the generation thread runs in (default
        ``torch.inference_mode``; quanto weights need ``torch.no_grad``, see transformers_quant.grad_mode).
        ``on_thread`` runs on the generation thread before each step (the backend sets torch's threads there)."""
        import torch
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.slots = slots
        self.eos = frozenset(eos)
        self.vocab = int(model.config.get_text_config().vocab_size)
        # The processors exist only if the config asks for them (a temperature of 1.0 or no top-k would
        # create none); every request then overrides all three with its own values.
        generation_config = GenerationConfig(do_sample=True, temperature=0.7, top_k=40, top_p=0.95,
                                             eos_token_id=list(eos), max_new_tokens=n_ctx)
        config = ContinuousBatchingConfig(
            per_request_processors=True,
            page_size=PAGE_SIZE,
            num_blocks=max(4, math.ceil(slots * n_ctx / PAGE_SIZE)),  # every slot can fill its context
            max_requests_per_batch=slots,
            max_batch_tokens=512,  # prompt prefill is chunked into the decode steps of the others
            allow_block_sharing=prefix_cache,
            use_cuda_graph=False,  # graphs per batch shape cost a warm-up a chat server does not amortise
        )
        self._mgr = model.init_continuous_batching(generation_config=generation_config,
                                                   continuous_batching_config=config)
        from backends.hf.batch_sampling import install

        install(self._mgr)  # top-k/top-p/draw without full-vocabulary sorts (issue 16)
        # other torch compute (the backend's generate()) runs on the generation thread between steps, so
        # the process keeps one OpenMP team (transformers_loop_calls)
        self._calls = LoopCalls()
        self._calls.install(self._mgr)
        body = self._mgr._generation_loop_body  # looked up on the instance at each step

        def threads_then_body(*args, **kwargs):
            on_thread()  # the model's torch threads for this step (auto follows the CPU other processes leave)
            return body(*args, **kwargs)

        self._mgr._generation_loop_body = threads_then_body
        _run_loop_in(self._mgr, grad_mode or torch.inference_mode, self._calls)
        self._routes: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._counter = 0
        self._mgr.start()
        # The generation thread allocates the paged cache first thing: wait for it, so a cache that does not
        # fit fails the load (and the backend falls back) instead of the first request.
        deadline = time.monotonic() + 120
        while self._mgr.batch_processor is None and self._mgr.is_running() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._mgr.batch_processor is None:
            fatal = self._fatal()
            self._mgr.stop(block=True, hard_stop=True)
            raise BackendError(f"The batch engine did not start: {fatal or 'timed out allocating its cache'}.")
        self.kv_bytes = int(self._mgr.batch_processor.cache.cache_tensor.nbytes)
        self._dispatcher = threading.Thread(target=self._dispatch, name="hf-cb-dispatch", daemon=True)
        self._dispatcher.start()

    @staticmethod
    def accepts(params: SamplingParams) -> bool:
        """Whether the batch can honour these parameters exactly (temperature, top-k, top-p only)."""
        return (params.repetition_penalty == 1.0 and not params.samplers_set()
                and (params.greedy or params.seed is None))

    def _dispatch(self) -> None:
        for out in self._mgr:  # ends when the generation thread stops
            with self._lock:
                q = self._routes.get(out.request_id)
            if q is not None:
                q.put(out)

    def _processor_kwargs(self, params: SamplingParams) -> dict:
        if params.greedy:
            return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        return {"temperature": float(params.temperature), "top_k": int(params.top_k or self.vocab),
                "top_p": float(params.top_p)}

    def stream(self, ids: list[int], params: SamplingParams, budget: int,
               cancel: threading.Event) -> Iterator[tuple[int | None, str | None]]:
        """Yield each new token id, then ``(None, finish_reason)``."""
        with self._lock:
            self._counter += 1
            rid = f"quantlab-{self._counter}"
            q: queue.Queue = queue.Queue()
            self._routes[rid] = q
        done = False
        try:
            if self._mgr.add_request(ids, request_id=rid, max_new_tokens=budget, streaming=True,
                                     eos_token_id=sorted(self.eos), **self._processor_kwargs(params)) is None:
                raise BackendError("The batch engine refused the request (it is stopping).")
            sent = 0
            while True:
                if cancel.is_set():
                    yield None, "cancelled"
                    return
                try:
                    out = q.get(timeout=_POLL_S)
                except queue.Empty:
                    if not self._mgr.is_running():
                        raise BackendError(f"The batch engine stopped: {self._fatal() or 'shut down'}.") from None
                    continue
                if out.error:
                    raise BackendError(f"Generation failed: {out.error}")
                tokens = out.generated_tokens
                for t in tokens[sent:]:
                    if t in self.eos:
                        done = out.is_finished()
                        yield None, "stop"
                        return
                    yield t, None
                sent = len(tokens)
                if out.is_finished():
                    done = True
                    yield None, "length" if sent >= budget else "stop"
                    return
        finally:
            if not done:  # cancelled, failed, or the consumer went away: free its slot and KV pages
                self._mgr.cancel_request(rid)
            with self._lock:
                self._routes.pop(rid, None)

    def submit(self, fn: Callable[[], object]) -> Future | None:
        """Run ``fn`` on the generation thread between steps; None once that thread has ended."""
        return self._calls.submit(fn)

    def _fatal(self) -> str | None:
        err = self._mgr.background_thread_status.fatal_error
        return f"{type(err).__name__}: {err}" if err is not None else None

    def close(self) -> None:
        self._mgr.stop(block=True, hard_stop=True)
        self._dispatcher.join(timeout=5)


def _run_loop_in(manager, grad_mode: Callable[[], AbstractContextManager], calls: LoopCalls) -> None:
    """Run the manager's generation thread inside ``grad_mode()``, as generate() runs in the app.

    transformers steps the batch under ``torch.no_grad`` only; at batch 1 on a CPU the 135M model's
    step is ~1,000 small ops, and inference mode skips the version counters and view tracking each
    of them pays under no_grad. The cache it allocates on that thread becomes an inference tensor,
    which only that thread touches. The thread's target is looked up on the instance by ``start()``,
    so this must run before it. On the way out the thread runs what ``calls`` still holds and closes it,
    so a call is never left waiting on a thread that has gone."""
    loop = manager._run_generation_loop

    def run() -> None:
        try:
            with grad_mode():
                loop()
        finally:
            calls.close()

    manager._run_generation_loop = run
