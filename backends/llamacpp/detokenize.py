"""Token ids back to bytes in linear time, as llama-server's /detokenize does it: each token's piece
(special tokens written out) looked up once, the pieces joined once.

llama-cpp-python's ``Llama.detokenize`` appends each piece to a growing ``bytes`` object, which copies
the whole prefix every time: quadratic in the length (150,000 tokens took 31 s and slowed every
chat beside it). Its result is kept exactly, including its one quirk: a leading space after a
leading BOS is dropped.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

PIECE_BYTES = 64  # a first guess at the longest piece; longer ones are looked up again with the size they need


def detokenize_bytes(llm, token_ids: Sequence[int], special: bool = True) -> bytes:
    """The bytes of ``token_ids`` on ``llm`` (a ``llama_cpp.Llama``), ids already checked."""
    import llama_cpp as L

    vocab = llm._model.vocab
    size = PIECE_BYTES
    buf = ctypes.create_string_buffer(size)
    pieces = []
    for t in token_ids:
        n = L.llama_token_to_piece(vocab, t, buf, size, 0, special)
        if n < 0:  # the piece is longer than the buffer: -n bytes
            size = -n
            buf = ctypes.create_string_buffer(size)
            n = L.llama_token_to_piece(vocab, t, buf, size, 0, special)
        pieces.append(buf.raw[:n])
    out = b"".join(pieces)
    if token_ids and token_ids[0] == llm.token_bos() and out[:1] == b" ":
        out = out[1:]
    return out
