"""Batched decoding for the llama.cpp backend: several requests decoded together in one llama_batch.

One model, one llama context holding a KV cache per sequence (``n_seq_max`` = slots). The engine is
stepped on the process's llama.cpp compute thread (``backends.llamacpp.compute``, which steps every
loaded model's engine in turn): between decode steps it admits waiting requests into free slots (their
prompts are prefilled in chunks inside the same batches), gives every running sequence its next
token in one ``llama_decode``, samples each sequence with its own sampler chain (built by the caller
with ``llamacpp_sampling``: its own samplers, constraint and seed), and retires sequences that finish or are
cancelled, freeing their KV cells. Requests join and leave between steps; nobody waits for the
longest reply. Every batch lists its sequences in slot order (llama.cpp fits only consecutive
sequence ids into one ubatch). A new request takes the free slot whose kept cells share the longest
prefix with its prompt; cells about to be overwritten go to a host-memory cache
(``llamacpp_prompt_cache``) from which a later prompt sharing more of them is restored.

Speculative decoding (n-gram prompt lookup, ``draft_tokens`` > 0 for a greedy request): such a sequence
puts its last token and up to ``draft_tokens`` drafted ones (``backends.speculative``) in the same batch
as everyone else's tokens, with logits at each; its own sampler chain picks the token at each position
in turn, the drafts are accepted up to the first disagreement (whose pick is the next token), and the
KV cells of the rejected drafts are removed from that sequence only (``llama_memory_seq_rm``). Other
sequences, sampled ones included, decode one token per step as before. The final delta carries the
request's drafted / accepted counts.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np  # llama_cpp imports it already

from backends.llamacpp import compute
from backends.base import TextDelta
from backends.errors import BackendError, OutOfMemory
from backends.llamacpp.detokenize import detokenize_bytes
from backends.llamacpp.prompt_cache import MIN_TOKENS, PromptCache, common_prefix
from backends.llamacpp.sampling import token_logprob
from backends.speculative import NgramDrafter

_END = object()
log = logging.getLogger(__name__)


@dataclass
class _Seq:
    tokens: list[int]  # the prompt
    sampler: object  # its llama_sampler chain; the engine frees it when the sequence ends
    budget: int
    cancel: threading.Event
    logprobs: int | None = None  # None: none; else the chosen token's logprob and this many alternatives
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # C put/get: cheap on the compute thread
    slot: int = -1
    pos: int = 0  # tokens already in the KV cache
    prefill: int = 0  # prompt tokens already sent
    last: int = -1  # the token to feed next
    generated: int = 0
    in_kv: list[int] = field(default_factory=list)  # the tokens whose cells this sequence's KV holds
    decoder: object = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    draft_max: int = 0  # speculative: most draft tokens per step (0: plain decoding)
    drafter: NgramDrafter | None = None
    k_cur: int = 0  # the current draft length, adapted like the single-slot path's
    drafted: int = 0
    accepted: int = 0
    media: object = None  # llamacpp_vision.MediaPrompt: a prompt with pictures, evaluated whole at admission
    argmax: bool = False  # the sampler chain is greedy alone: its pick is the logits' argmax, taken directly


class BatchEngine:
    def __init__(self, llm, slots: int, n_ctx_per_seq: int, n_threads: int, n_batch: int = 512,
                 prefix_cache: bool = True, host_cache_bytes: int = 0, adaptive=None):
        """``adaptive``: the model's ``backends.threads.AdaptiveThreads`` (auto threads), None for a fixed count."""
        import llama_cpp as L

        from backends.threads import ContextThreads

        self.L = L
        self.llm = llm  # the Llama object: model, vocab and tokenizer (its own context is not used here)
        self.slots = slots
        self.n_ctx_per_seq = n_ctx_per_seq
        self.n_batch = n_batch
        # Start from the Llama object's own context settings (flash attention, KV types, ...) so a
        # request decodes with the same numerics here as through the unbatched path.
        params = L.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = n_ctx_per_seq * slots
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = slots
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = False  # a KV stream per sequence: same cell layout as alone, so same numerics
        params.no_perf = True
        self.ctx = L.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise OutOfMemory(f"llama.cpp could not allocate a context for {slots} sequences of {n_ctx_per_seq} tokens.")
        self.mem = L.llama_get_memory(self.ctx)
        self._sync_threads = ContextThreads(L, self.ctx, adaptive, n_threads).sync
        self.vocab = llm._model.vocab
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self._logits_row = ctypes.c_float * self.n_vocab  # one row of logits, viewed in place
        self._pieces: dict[int, bytes] = {}  # token -> its bytes in a reply (``_text_piece``)
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._free = list(range(slots))
        # What each slot's KV cache still holds from its last request: a new request goes to the free
        # slot sharing the longest prefix with it and only its new tokens are prefilled (the chat
        # template's system prompt, and in a conversation every earlier turn).
        self._kept: dict[int, list[int]] = {i: [] for i in range(slots)}
        # Reusing a prefix changes how the rest of the prompt is batched, and llama.cpp's kernels are not
        # bit-identical across batch shapes: greedy output can then differ from a cold run's (as with
        # llama.cpp's own cache_prompt). Most with flash attention (the default): its CPU kernel
        # accumulates a batch smaller than its tile in f16, a larger one in f32 (measured: logprobs up to
        # ~0.2 nats apart; without it within 0.05, tests/test_trust_prefix.py). prefix_cache=False trades
        # that TTFT for exact repeatability.
        self.prefix_cache = prefix_cache
        self.prefix_hits = 0  # tokens not recomputed thanks to kept prefixes
        # cells that left a slot, kept in host memory for a later prompt sharing their prefix
        self.host_cache = PromptCache(host_cache_bytes if prefix_cache else 0)
        self._lock = threading.Lock()  # guards _waiting and _stop, which other threads change
        self._stop = False
        self._closed = threading.Event()
        compute.attach(self)

    # --- client side -----------------------------------------------------------------------------

    def submit(self, tokens: list[int], sampler, budget: int, cancel: threading.Event,
               logprobs: int | None = None, draft_tokens: int = 0, media=None) -> Iterator:
        """Queue a request; ``sampler`` (a llama_sampler chain) is the engine's to free from here.
        ``draft_tokens`` > 0: decode it speculatively (a greedy request only: the drafts are checked
        against the chain's pick, which only reproduces plain decoding when that pick is deterministic).
        ``media``: a prompt with pictures (``llamacpp_vision.MediaPrompt``, the caller closes it after the
        stream): evaluated whole into the sequence's slot when it is admitted, with no shared prefix;
        ``tokens`` is then a placeholder as long as its positions."""
        seq = _Seq(tokens, sampler, budget, cancel, logprobs, draft_max=draft_tokens, k_cur=draft_tokens,
                   media=media)
        if draft_tokens > 0:
            seq.drafter = NgramDrafter(tokens)  # built here, on the caller's thread, not the scheduler's
        seq.argmax = self._greedy_alone(sampler)
        with self._lock:
            if self._stop:
                self._free_sampler(seq)
                raise BackendError("The model is being unloaded.")
            self._waiting.append(seq)
        compute.wake()
        return self._drain(seq)

    def _drain(self, seq: _Seq) -> Iterator:
        try:
            while True:
                item = seq.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            seq.cancel.set()  # the consumer left: the scheduler retires the sequence at the next step
            compute.wake()

    @property
    def busy(self) -> int:
        return len(self._running) + len(self._waiting)

    def close(self) -> None:
        with self._lock:
            self._stop = True
        if compute.on_thread():
            self._shut_down()
        else:
            compute.wake()
            # the next step cancels every request and detaches the engine
            if not self._closed.wait(timeout=30):
                log.warning("llama.cpp batch engine still busy after 30 s: its context is left allocated")
                return
        L = self.L
        L.llama_batch_free(self.batch)
        self.host_cache.clear()
        L.llama_free(self.ctx)
        self.ctx = None

    # --- scheduler -------------------------------------------------------------------------------

    def _piece(self, token: int) -> bytes:
        return self.llm.detokenize([token], special=True)

    def _greedy_alone(self, chain) -> bool:
        """Whether ``chain`` is one greedy sampler and nothing else (no grammar, penalty, bias): its pick
        is then the first highest logit, which numpy finds in ~7 us where ``llama_sampler_sample``
        (building the whole candidate array) takes ~80 us, on the compute thread between two decodes."""
        L = self.L
        try:
            return (chain is not None and L.llama_sampler_chain_n(chain) == 1
                    and L.llama_sampler_name(L.llama_sampler_chain_get(chain, 0)) == b"greedy")
        except (AttributeError, TypeError):  # a llama-cpp-python without these: sample as usual
            return False

    def _sample(self, seq: _Seq, idx: int) -> int:
        """The token ``seq``'s sampler chain picks at batch index ``idx``."""
        if seq.argmax:  # same pick as the greedy sampler: the first maximum, in vocabulary order
            row = self.L.llama_get_logits_ith(self.ctx, idx)
            logits = self._logits_row.from_address(ctypes.addressof(row.contents))
            return int(np.frombuffer(logits, dtype=np.float32).argmax())
        return self.L.llama_sampler_sample(seq.sampler, self.ctx, idx)

    def _text_piece(self, token: int) -> bytes:
        """The bytes a generated token adds to the reply (cached: the vocabulary never changes)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = detokenize_bytes(self.llm, [token], special=False)
        return piece

    def _free_sampler(self, seq: _Seq) -> None:
        """Free what the engine owns of a sequence that ends: its sampler chain, its pictures' chunks."""
        if seq.media is not None:
            seq.media.close()
        if seq.sampler is not None:
            self.L.llama_sampler_free(seq.sampler)
            seq.sampler = None

    def _retire(self, seq: _Seq, finish: str) -> None:
        tail = seq.decoder.decode(b"", final=True)
        seq.out.put(TextDelta(tail, finish_reason=finish, prompt_tokens=len(seq.tokens),
                              draft_tokens=seq.drafted, accepted_tokens=seq.accepted))
        seq.out.put(_END)
        # kept for the next request's prefix (cells freed on reuse); a picture's cells match no prompt
        self._kept[seq.slot] = seq.in_kv if seq.media is None else []
        self._free_sampler(seq)
        self._running.remove(seq)
        self._free.append(seq.slot)

    def _admit(self) -> None:
        while self._waiting and self._free:
            seq = self._waiting.popleft()
            if seq.cancel.is_set():
                self._end_unstarted(seq)
                continue
            # the free slot whose kept cells share the longest prefix with this prompt (on a tie the one
            # freed longest ago, as ``_free`` is in the order slots were freed)
            seq.slot, reuse = max(((slot, common_prefix(self._kept[slot], seq.tokens)) for slot in self._free),
                                  key=lambda x: x[1])
            self._free.remove(seq.slot)
            if seq.media is not None:
                reuse = 0
            elif self.prefix_cache:
                try:
                    reuse = self._from_host_cache(seq, reuse)
                except Exception:  # noqa: BLE001 - the host cache is an optimisation: prefill instead
                    log.exception("llama.cpp host prompt cache failed; prefilling the prompt instead")
                    self.host_cache.clear()
                    self._kept[seq.slot], reuse = [], 0
                    self.L.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
            reuse = min(reuse, len(seq.tokens) - 1) if self.prefix_cache else 0  # the last prompt token is evaluated
            L = self.L
            if not L.llama_memory_seq_rm(self.mem, seq.slot, reuse, -1):
                L.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
                reuse = 0
            seq.prefill = seq.pos = reuse
            seq.in_kv = list(seq.tokens[:reuse])
            self.prefix_hits += reuse
            seq.out.put(TextDelta("", prompt_tokens=len(seq.tokens)))
            self._running.append(seq)

    def _from_host_cache(self, seq: _Seq, reuse: int) -> int:
        """Before ``seq`` overwrites its slot's kept cells: save those to the host cache, and restore a
        cached prompt instead when it shares a longer prefix with ``seq``'s. Returns the tokens reused."""
        L, kept, cache = self.L, self._kept[seq.slot], self.host_cache
        key, cached = cache.best(seq.tokens)
        gain = key is not None and cached >= reuse + MIN_TOKENS
        if gain or reuse < len(kept):  # cells about to be lost
            cache.save(L, self.ctx, seq.slot, kept, protect=key if gain else None)
        if not gain:
            return reuse
        if cache.restore(L, self.ctx, key, seq.slot):
            self._kept[seq.slot] = list(key)
            return cached
        L.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)  # a failed restore may leave some cells behind
        self._kept[seq.slot] = []
        return 0

    def step(self) -> bool:
        """One scheduling step, on the compute thread: admit, retire the cancelled, decode once for
        every running sequence. Whether there is more to do right away (see ``compute.ComputeThread``)."""
        with self._lock:
            if self._stop:
                self._shut_down()
                return False
            self._admit()
        for seq in [s for s in self._running if s.media is not None and s.prefill < len(s.tokens)]:
            try:
                self._prefill_media(seq)
            except BaseException as exc:  # noqa: BLE001 - this request hears about it; the others go on
                self._running.remove(seq)
                self._fail(seq, exc if isinstance(exc, BackendError) else BackendError(f"llama.cpp: {exc}"))
        for seq in [s for s in self._running if s.cancel.is_set()]:
            self._retire(seq, "cancelled")
        if not self._running:
            return bool(self._waiting)
        try:
            self._step()
        except BaseException as exc:  # noqa: BLE001 - every running request hears about it; the engine goes on
            err = exc if isinstance(exc, BackendError) else BackendError(f"llama.cpp decode failed: {exc}")
            failed, self._running = self._running, []
            for seq in failed:
                self._fail(seq, err)
        return bool(self._running or self._waiting)

    def _fail(self, seq: _Seq, err: BackendError) -> None:
        """End a sequence (no longer running) with ``err``: its cells and slot freed."""
        seq.out.put(err)
        seq.out.put(_END)
        self.L.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
        self._kept[seq.slot] = []
        self._free.append(seq.slot)
        self._free_sampler(seq)

    def _end_unstarted(self, seq: _Seq) -> None:
        """End a request that never got a slot: cancelled."""
        self._free_sampler(seq)
        seq.out.put(TextDelta("", finish_reason="cancelled", prompt_tokens=len(seq.tokens)))
        seq.out.put(_END)

    def _shut_down(self) -> None:
        """Closing: every request ends cancelled, and the engine is stepped no more."""
        for seq in list(self._running):
            self._retire(seq, "cancelled")
        for seq in self._waiting:
            self._end_unstarted(seq)
        self._waiting.clear()
        compute.detach(self)  # inline: this runs on the compute thread
        self._closed.set()

    def _prefill_media(self, seq: _Seq) -> None:
        """Evaluate a prompt with pictures into ``seq``'s slot (its own decodes, outside the shared
        batch) and draw its first token from the last logits."""
        self._sync_threads()
        try:
            seq.pos = compute.run(seq.media.eval, self.ctx, 0, seq.slot, self.n_batch)
        finally:
            seq.media.close()  # the chunks are in the KV cache now (or failed): freed here, by their owner
        seq.prefill = len(seq.tokens)
        out: list[tuple[_Seq, TextDelta]] = []
        finish = self._take(seq, -1, [], out)
        for _, delta in out:
            seq.out.put(delta)
        if finish is not None:
            self._retire(seq, finish)

    def _step(self) -> None:
        """One llama_decode: a token (plus its drafts, when speculative) for every generating sequence,
        plus prompt chunks."""
        L, b = self.L, self.batch
        n = 0
        sample_at: list[tuple[_Seq, int, list[int]]] = []  # (sequence, batch index of its first logits, drafts)

        def add(token: int, pos: int, slot: int, logits: bool) -> None:
            nonlocal n
            b.token[n] = token
            b.pos[n] = pos
            b.n_seq_id[n] = 1
            b.seq_id[n][0] = slot
            b.logits[n] = logits
            n += 1

        # Room goes to decoding sequences first (a token each, and their drafts), so prompts never starve
        # them; prompt chunks get what is left.
        plan: list[tuple[_Seq, list[int], int]] = []  # (sequence, tokens to feed, how many are prompt)
        room = self.n_batch
        for seq in self._running:
            if seq.prefill == len(seq.tokens) and room > 0:
                draft = self._draft(seq, room - 1)
                plan.append((seq, [seq.last, *draft], 0))
                room -= 1 + len(draft)
        for seq in self._running:
            if seq.prefill < len(seq.tokens) and room > 0:
                take = min(len(seq.tokens) - seq.prefill, room)
                plan.append((seq, seq.tokens[seq.prefill:seq.prefill + take], take))
                room -= take
        # The batch lists sequences in slot (= KV stream) order. With a KV stream per sequence llama.cpp
        # puts only consecutive sequence ids in one ubatch (llama_batch_allocr::split_equal, sequential),
        # so slots 2, 0, 1, 3 in that order cost three graph computes instead of one: measured on 2 cores,
        # 33-40 ms instead of 24 ms per 4-token step.
        plan.sort(key=lambda p: p[0].slot)
        for seq, feed, prompt in plan:
            if not prompt:  # the last token and its drafts, logits at each
                sample_at.append((seq, n, feed[1:]))
                for i, token in enumerate(feed):
                    add(token, seq.pos + i, seq.slot, True)
            else:  # a prompt chunk; logits only after the prompt's last token
                for i, token in enumerate(feed):
                    last = seq.prefill + i == len(seq.tokens) - 1
                    add(token, seq.pos + i, seq.slot, last)
                    if last:
                        sample_at.append((seq, n - 1, []))
                seq.prefill += prompt
            seq.in_kv.extend(feed)
            seq.pos += len(feed)
        b.n_tokens = n
        self._sync_threads()
        rc = compute.run(L.llama_decode, self.ctx, b)
        if rc != 0:
            raise OutOfMemory("llama.cpp found no room in the KV cache for this batch." if rc == 1 else
                              f"llama_decode returned {rc}")
        # Every sequence's tokens are picked before any is handed out: handing one wakes its reader, and
        # the next pick's ctypes calls (which let the GIL go) would then wait for that reader's Python.
        out: list[tuple[_Seq, TextDelta]] = []
        finished = [(seq, finish) for seq, idx, draft in sample_at
                    if (finish := self._take(seq, idx, draft, out)) is not None]
        for seq, delta in out:
            seq.out.put(delta)
        for seq, finish in finished:
            self._retire(seq, finish)

    def _draft(self, seq: _Seq, room: int) -> list[int]:
        """The drafts to verify with ``seq``'s next token: none for a plain sequence; never more than
        the budget, the context or the batch has room for (every draft accepted plus the pick after
        them must fit)."""
        if seq.drafter is None:
            return []
        return seq.drafter.draft(min(seq.k_cur, seq.budget - seq.generated - 1,
                                     self.n_ctx_per_seq - seq.pos - 1, room))

    def _take(self, seq: _Seq, idx: int, draft: list[int], out: list) -> str | None:
        """After the decode: the sequence's token(s) from the logits at ``idx`` (and after, one row per
        draft), added to ``out`` one by one as plain decoding would emit them; the rejected drafts' KV
        cells removed. Returns the finish reason when the sequence ends here (retired by the caller)."""
        L = self.L
        base = seq.pos - len(draft)  # the position the pick at ``idx`` would be fed at
        accepted, finish = 0, None
        for i in range(len(draft) + 1):
            token = self._sample(seq, idx + i)
            if L.llama_vocab_is_eog(self.vocab, token):
                finish = "stop"
                break
            seq.generated += 1
            seq.last = token
            text = seq.decoder.decode(self._text_piece(token))
            lp = () if seq.logprobs is None else (
                token_logprob(L, self.ctx, idx + i, token, self.n_vocab, seq.logprobs, self._piece),)
            out.append((seq, TextDelta(text, tokens=1, logprobs=lp)))
            hit = i < len(draft) and token == draft[i]
            if seq.drafter is not None:
                seq.drafter.extend((token,))
            if hit:
                accepted += 1  # its KV cell (fed as a draft) is the right one: kept
            if seq.cancel.is_set():
                finish = "cancelled"
            elif seq.generated >= seq.budget or base + i >= self.n_ctx_per_seq:
                finish = "length"
            if finish is not None or not hit:
                break
        if draft:
            seq.drafted += len(draft)
            seq.accepted += accepted
            seq.k_cur = min(seq.draft_max, seq.k_cur + 2) if accepted == len(draft) else max(1, seq.k_cur - 1)
            rejected = len(draft) - accepted
            if rejected:
                keep = seq.pos - rejected
                if not L.llama_memory_seq_rm(self.mem, seq.slot, keep, -1):
                    raise BackendError("llama.cpp could not remove rejected draft tokens from the KV cache.")
                seq.pos = keep
                del seq.in_kv[keep:]
        return finish
