"""Per-token log probabilities for the transformers backend: a step's log-softmax row and the chosen
token become a ``TokenLogprob`` (the token's text and exact bytes, and its top alternatives)."""

from __future__ import annotations

import re
from functools import lru_cache

from backends.base import TokenLogprob

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece byte fallback


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character a byte-level BPE piece uses for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class TokenTexts:
    """Text and bytes of single tokens for one tokenizer."""

    def __init__(self, tok):
        self.tok = tok
        backend = getattr(tok, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self._special = set(getattr(tok, "all_special_ids", ()))

    def token_bytes(self, token_id: int) -> bytes:
        piece = self.tok.convert_ids_to_tokens(int(token_id))
        if piece is None:
            return b""
        if token_id in self._special:
            return piece.encode("utf-8")
        if self.byte_level:
            table = _byte_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        m = _BYTE_PIECE.match(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return self.tok.decode([int(token_id)], skip_special_tokens=False).encode("utf-8")

    def text(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def logprob(self, row, token_id: int, top_n: int) -> TokenLogprob:
        """``row``: the step's log-softmax (torch, [vocab]); ``top_n`` alternatives, most likely first."""
        import torch

        top: tuple[tuple[str, float], ...] = ()
        if top_n:
            values, ids = torch.topk(row, top_n)
            top = tuple((self.text(i), float(v)) for v, i in zip(values.tolist(), ids.tolist())
                        if v != float("-inf"))  # masked by a constraint: not an alternative
        raw = self.token_bytes(token_id)
        return TokenLogprob(raw.decode("utf-8", errors="replace"), float(row[token_id]), raw, top)
