"""Host-memory copies of KV cells that left a batch slot, so a later prompt sharing their prefix is not
recomputed (llama-server's ``--cache-ram``).

A batch slot keeps its last request's KV cells, and a new request goes to the free slot sharing the
longest prefix with it. With S slots that remembers S conversations; a burst of new conversations with
the same long system prompt (an agent framework's tools, a RAG preamble) finds it in one slot at most
and prefills it again everywhere else, and a returning conversation whose slot was taken starts over.
Before a slot's cells are overwritten, the engine saves them here (``llama_state_seq_get_data``: only
that sequence's cells, at about the size of its KV); on admission, an entry sharing a longer prefix
than any free slot is copied back into the slot (``llama_state_seq_set_data``) and only the rest of the
prompt is prefilled. Restored cells are the saved ones bit for bit; the reply built on them is the
reply from scratch up to the kernels' batch-shape numerics (the rest of the prompt is a smaller batch):
with flash attention off, the same greedy text; on (the default), logprobs up to ~0.2 nats apart and a
greedy near-tie may flip, as with llama-server's cache reuse (tests/test_trust_prefix.py measures both).

Entries are keyed by their tokens; the least recently used go first when ``max_bytes`` is exceeded,
and an entry whose tokens begin another's is dropped as redundant.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict

MIN_TOKENS = 16  # shorter runs of cells are cheaper to recompute than to keep


class PromptCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0  # restores
        self._entries: OrderedDict[tuple[int, ...], ctypes.Array] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, tokens: list[int]) -> tuple[tuple[int, ...] | None, int]:
        """The entry sharing the longest prefix with ``tokens``, and that length (0: none)."""
        best_key, best_n = None, 0
        for key in self._entries:
            n = common_prefix(key, tokens)
            if n > best_n:
                best_key, best_n = key, n
        return best_key, best_n

    def save(self, L, ctx, seq_id: int, tokens: list[int], protect: tuple[int, ...] | None = None) -> bool:
        """Copy sequence ``seq_id``'s cells (which hold ``tokens``) out of the context, evicting the least
        recently used entries to make room, never ``protect`` (the entry about to be restored)."""
        key = tuple(tokens)
        if self.max_bytes <= 0 or len(key) < MIN_TOKENS or any(k[:len(key)] == key for k in self._entries):
            return False  # off, too short, or already held (by itself or a longer entry)
        size = L.llama_state_seq_get_size(ctx, seq_id)
        protected = len(self._entries[protect]) if protect in self._entries else 0
        if size + protected > self.max_bytes:
            return False
        buf = (ctypes.c_uint8 * size)()
        if L.llama_state_seq_get_data(ctx, buf, size, seq_id) != size:
            return False
        for k in [k for k in self._entries if key[:len(k)] == k and k != protect]:  # what this entry supersedes
            self._drop(k)
        while self.bytes + size > self.max_bytes:
            self._drop(next(k for k in self._entries if k != protect))
        self._entries[key] = buf
        self.bytes += size
        return True

    def restore(self, L, ctx, key: tuple[int, ...], seq_id: int) -> bool:
        """Copy entry ``key``'s cells into sequence ``seq_id`` (whose cells it replaces)."""
        buf = self._entries[key]
        self._entries.move_to_end(key)
        if L.llama_state_seq_set_data(ctx, buf, len(buf), seq_id) != len(buf):
            return False
        self.hits += 1
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key: tuple[int, ...]) -> None:
        self.bytes -= len(self._entries.pop(key))


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
