"""Generated text keeps every byte of every token: llama-cpp-python's per-token ``detokenize`` reads
pieces through a 32-byte buffer and silently drops longer ones (this model has 47, runs of spaces that
deep code indentation uses), so the engine's streams decode pieces with backends.llamacpp.detokenize."""

from __future__ import annotations

import threading

from tests.conftest import greedy


def _long_pieces(llm) -> list[tuple[int, bytes]]:
    import ctypes

    import llama_cpp as L

    vocab = llm._model.vocab
    buf = ctypes.create_string_buffer(256)
    out = []
    for t in range(llm.n_vocab()):
        n = L.llama_token_to_piece(vocab, t, buf, 256, 0, False)
        if n > 32:
            out.append((t, buf.raw[:n]))
    return out


def test_long_token_pieces_come_back_whole(llama_backend):
    from backends.llamacpp.detokenize import detokenize_bytes

    llm = llama_backend._llm
    long = _long_pieces(llm)
    assert long, "the embedded model has pieces longer than 32 bytes (runs of spaces)"
    for token, piece in long:
        assert detokenize_bytes(llm, [token], special=False) == piece
    # what the library's own per-token call gives for them: nothing (the bug this module avoids)
    assert llm.detokenize([long[0][0]]) == b""


def test_a_stream_never_uses_the_librarys_lossy_per_token_detokenize(llama_backend, monkeypatch):
    from llama_cpp import _internals

    def lossy(*args, **kwargs):
        raise AssertionError("the per-token library detokenize drops pieces over 32 bytes")

    monkeypatch.setattr(_internals.LlamaModel, "detokenize", lossy)
    deltas = list(llama_backend.stream(greedy(16), threading.Event()))
    assert "".join(d.text for d in deltas).strip()
    assert deltas[-1].finish_reason in ("stop", "length")


