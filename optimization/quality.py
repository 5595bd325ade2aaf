"""The quality meter: perplexity, KL divergence and top-1 agreement against a reference, computed on
the SAME token ids for every variant, across both backends.

The reference's log-probabilities are written once to a memory-mapped file, so variants are loaded
one at a time and compared position by position without holding two models or two logit sets in RAM.
"""

from __future__ import annotations

import codecs
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from backends.errors import Cancelled, InvalidRequest
from backends.files.docstrings import docstring_text

# Modules whose docstrings make the default evaluation text: English prose about code, shipped with
# every Python, so the meter needs no download. Fixed order: the same text on every machine.
STDLIB_MODULES = ("json", "collections", "functools", "itertools", "pathlib", "argparse", "logging", "textwrap",
                  "dataclasses", "contextlib", "heapq", "bisect", "statistics", "fractions", "decimal", "string",
                  "shutil", "tempfile", "csv", "datetime")


def stdlib_text(max_chars: int = 200_000) -> str:
    return docstring_text(STDLIB_MODULES, max_chars)


# Bytes read from an evaluation text per token to score: English prose takes about 4 bytes a token and
# code rarely more than 8, so this reads several times what will be scored and never the whole of a
# large file (a 10 MB text used to be read and tokenized in full to score 1,024 tokens).
BYTES_PER_TOKEN = 16


def text_bytes_for(max_tokens: int) -> int:
    """How much of an evaluation text to read to score ``max_tokens`` tokens (with a wide margin)."""
    return max(4096, int(max_tokens) * BYTES_PER_TOKEN)


def load_text(path: str | None, max_bytes: int) -> str:
    """The first ``max_bytes`` bytes of the text at ``path`` (a character cut at the end is left out),
    or the default text (Python's docstrings) cut to as many characters."""
    if not path:
        return stdlib_text(max_chars=min(200_000, max_bytes))
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidRequest(f"No evaluation text at {path!r}.", "text")
    with open(p, "rb") as f:
        data = f.read(max_bytes)
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=-1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@dataclass
class QualityRow:
    variant: str
    backend: str
    quantization: str
    ppl: float
    kld_mean: float
    kld_p99: float
    top1_agreement: float
    tokens: int
    footprint_mib: float
    eval_tokens_per_s: float
    decode_tokens_per_s: float | None = None
    is_reference: bool = False
    bpw: float | None = None  # measured from the GGUF header (nominal for transformers quantizations)
    source: str | None = None  # the file or folder the variant was made from
    source_type: str | None = None  # its own type: Q4_1 means the reference is the dequantized Q4_1
    note: str | None = None  # provenance, in words
    warning: str | None = None  # e.g. more bits than the source
    tensors: str | None = None  # "Q4_K_M: 166 q5_0, 61 f32, ... · 6.17 bpw"
    memory: dict | None = None  # monitoring.model_memory: weights, KV, overhead, total
    flash_attn: str | None = None  # llama.cpp: the flash attention it was scored with ("auto: on", "on", "off")

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


class Reference:
    """The reference's next-token log-probs at every scored position, on disk (float32 memmap),
    allocated on the first write (when the vocabulary size is known)."""

    def __init__(self, directory: Path | None = None):
        self._dir = directory
        self._file = None
        self.logp: np.ndarray | None = None

    def write(self, pos: int, lp: np.ndarray, total: int) -> None:
        if self.logp is None:
            self._file = tempfile.NamedTemporaryFile(dir=self._dir, prefix="quantlab-ref-", suffix=".f32")  # noqa: SIM115
            self.logp = np.memmap(self._file.name, dtype=np.float32, mode="w+", shape=(total, lp.shape[1]))
        self.logp[pos:pos + len(lp)] = lp

    def close(self) -> None:
        self.logp = None
        if self._file is not None:
            self._file.close()
            self._file = None


def windows_of(token_ids: Sequence[int], window: int, max_tokens: int) -> list[list[int]]:
    ids = list(token_ids)[:max_tokens]
    if window < 16:
        raise InvalidRequest("The window must be at least 16 tokens.", "window")
    if len(ids) < window:
        raise InvalidRequest(f"The evaluation text is {len(ids)} tokens long; one window needs {window}. "
                             "Give a longer text or a smaller window.", "text")
    return [ids[i:i + window] for i in range(0, len(ids) - window + 1, window)]


SCORINGS = ("all", "llama.cpp")
LLAMACPP_MIN_LOG_PROB = -16.0  # llama-perplexity drops reference probabilities below e^-16 from the KLD sum


def chunks_llamacpp(token_ids: Sequence[int], window: int, max_tokens: int, bos: int | None) -> list[list[int]]:
    """llama-perplexity's chunks: the text's tokens (BOS first when the model adds one) cut into
    consecutive chunks of ``window`` tokens, the first token of each replaced by ``bos`` (None: a model
    that adds no BOS, chunks left as they are). Score them with ``scoring="llama.cpp"``."""
    chunks = windows_of(token_ids, window, max_tokens)
    return [[bos, *c[1:]] if bos is not None else c for c in chunks]


def scoring_offset(scoring: str, window: int) -> int:
    """First scored position of each window: every position ("all") or llama-perplexity's second half."""
    if scoring not in SCORINGS:
        raise InvalidRequest(f"scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}.", "scoring")
    return window // 2 if scoring == "llama.cpp" else 0


def score(logits_fn: Callable[[list[int]], np.ndarray], windows: list[list[int]], ref: Reference,
          build_reference: bool = False, progress: Callable[[float], None] = lambda f: None,
          scoring: str = "all", cancel: threading.Event | None = None) -> dict:
    """Perplexity of ``logits_fn`` over ``windows`` and, against ``ref``, KL divergence (mean, p99)
    and top-1 agreement. With ``build_reference`` the log-probs are written into ``ref`` instead.

    ``scoring="all"`` scores the logits at every position but the last of each window, each predicting
    the next token; ``"llama.cpp"`` is llama-perplexity's convention: only positions ``len(w) // 2`` ..
    len(w) - 2 (windows from ``chunks_llamacpp``), and its KLD sum (reference log-probs below -16 left
    out, no clipping). Once ``cancel`` is set it stops before the next window (Cancelled)."""
    import time

    first_scored = scoring_offset(scoring, len(windows[0]))
    llamacpp = scoring == "llama.cpp"
    total = sum(len(w) - 1 - first_scored for w in windows)
    nll, klds, agree, pos = [], [], 0, 0
    t0 = time.perf_counter()
    for wi, w in enumerate(windows):
        if cancel is not None and cancel.is_set():
            raise Cancelled("The evaluation was stopped.")
        logits = np.asarray(logits_fn(w), dtype=np.float32)
        if logits.shape[0] < len(w):
            raise InvalidRequest("The backend returned fewer logits than tokens.")
        lp = log_softmax(logits[first_scored: len(w) - 1])
        targets = np.asarray(w[first_scored + 1:])
        nll.append(-lp[np.arange(len(targets)), targets])
        if build_reference:
            ref.write(pos, lp, total)
        else:
            vocab = min(ref.logp.shape[1], lp.shape[1])
            rp = np.asarray(ref.logp[pos:pos + len(targets), :vocab])
            lpv = lp[:, :vocab]
            if llamacpp:
                kl = np.where(rp > LLAMACPP_MIN_LOG_PROB, np.exp(rp) * (rp - lpv), 0.0).sum(axis=1)
            else:
                kl = np.clip((np.exp(rp) * (rp - lpv)).sum(axis=1), 0.0, None)
            klds.append(kl)
            agree += int((rp.argmax(axis=1) == lpv.argmax(axis=1)).sum())
        pos += len(targets)
        progress((wi + 1) / len(windows))
    elapsed = time.perf_counter() - t0
    all_nll = np.concatenate(nll)
    out = {"ppl": float(np.exp(all_nll.mean())), "tokens": int(all_nll.size),
           "eval_tokens_per_s": sum(map(len, windows)) / elapsed}
    if not build_reference:
        k = np.concatenate(klds)
        out.update(kld_mean=float(k.mean()), kld_p99=float(np.percentile(k, 99)), top1_agreement=agree / pos)
    return out
