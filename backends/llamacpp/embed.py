"""Embeddings for the llama.cpp backend: a second llama context on the already loaded model, created
with embeddings on, so chat's context (and its KV cache) is never touched and the weights are not
loaded twice. Pooling is the GGUF's own (``<arch>.pooling_type``) where it names one, else the mean
of the token embeddings; vectors are L2-normalised, as llama-server's /v1/embeddings returns them.

Inputs are computed one at a time (one ``llama_decode`` each, on the compute thread, so a chat's decode
steps interleave with them), and ``cancel`` is checked between inputs: a client that goes away, an
unload or a shutdown stops the work within one input. ``close`` asks a running request to stop, so it
waits for at most the input being computed, never for the rest of a long request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from backends.llamacpp import compute
from backends.errors import BackendError, ContextLengthExceeded, InvalidRequest, OutOfMemory

POOLED = (1, 2, 3)  # LLAMA_POOLING_TYPE_MEAN, CLS, LAST: one vector per sequence


class Embedder:
    def __init__(self, llm, n_ctx: int):
        import llama_cpp as L

        self.L, self.llm = L, llm
        meta = llm.metadata
        arch = meta.get("general.architecture", "")
        try:
            pooling = int(meta.get(f"{arch}.pooling_type", L.LLAMA_POOLING_TYPE_MEAN))
        except ValueError:
            pooling = L.LLAMA_POOLING_TYPE_MEAN
        self.pooling = pooling if pooling in POOLED else L.LLAMA_POOLING_TYPE_MEAN
        params = L.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx  # a whole text in one ubatch (pooling needs it)
        params.n_seq_max = 1
        params.embeddings = True
        params.pooling_type = self.pooling
        params.no_perf = True
        self.ctx = L.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise OutOfMemory(f"llama.cpp could not allocate an embedding context of {n_ctx} tokens.")
        self.n_ctx = n_ctx
        self.n_embd = L.llama_model_n_embd(llm._model.model)
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(n_ctx, 0, 1)
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def embed(self, texts: Sequence[str], cancel: threading.Event | None = None,
              on_input: Callable[[int], None] | None = None) -> list[list[float]]:
        """One vector per text, in order. Stops between inputs once ``cancel`` is set (or the embedder
        is closing) and returns the vectors made so far; ``on_input(tokens)`` runs after each input."""
        import numpy as np

        token_lists = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidRequest("Each input to embed must be a string.", "input")
            tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            if not tokens:
                raise InvalidRequest(f"Input {i} is empty: there is nothing to embed.", "input")
            if len(tokens) > self.n_ctx:
                raise ContextLengthExceeded(f"Input {i} is {len(tokens)} tokens long; embeddings take at most "
                                            f"{self.n_ctx} tokens per input.")
            token_lists.append(tokens)
        out: list[list[float]] = []
        with self._lock:
            if self.ctx is None or self._closing.is_set():
                raise BackendError("The model is being unloaded.")
            for tokens in token_lists:
                if self._closing.is_set() or (cancel is not None and cancel.is_set()):
                    break
                out.append(self._one(tokens, np))
                if on_input is not None:
                    on_input(len(tokens))
        return out

    def _one(self, tokens: list[int], np) -> list[float]:
        """The normalised vector of one tokenized input (the lock held)."""
        L, b = self.L, self.batch
        L.llama_memory_clear(self.mem, True)
        for j, t in enumerate(tokens):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = t, j, 1, True
            b.seq_id[j][0] = 0
        b.n_tokens = len(tokens)
        rc = compute.run(L.llama_decode, self.ctx, b)
        if rc != 0:
            raise BackendError(f"llama.cpp could not compute the embedding (llama_decode returned {rc}).")
        ptr = L.llama_get_embeddings_seq(self.ctx, 0)
        if not ptr:
            raise BackendError("llama.cpp returned no embedding for this model.")
        v = np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float64)
        norm = float(np.linalg.norm(v))
        return (v / norm if norm > 0 else v).tolist()

    def close(self) -> None:
        """Free the context. A running request stops at its next input, so this waits for at most
        the one input being computed (the context cannot be freed under a running decode)."""
        self._closing.set()
        with self._lock:
            if self.ctx is not None:
                self.L.llama_batch_free(self.batch)
                self.L.llama_free(self.ctx)
                self.ctx = None
