"""What every path is asked, and how one streamed request is recorded.

Definitions (vLLM's ``benchmark_serving``): TTFT = request sent -> first non-empty text the client sees;
TPOT = (latency - TTFT) / (output tokens - 1); decode tok/s = (output tokens - 1) / (latency - TTFT) = 1 / TPOT.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

SYSTEM_PROMPT = "You are a helpful assistant."
WARMUP_PROMPT = "Say hello and introduce yourself in one sentence."
# Open-ended prompts, so greedy replies tend to run to max_tokens (equal lengths across requests).
PROMPTS = (
    "Explain in detail why the sky is blue during the day and red at sunset.",
    "Write a long story about a robot who learns to paint in a small seaside town.",
    "Give a detailed list of tips for staying productive when working from home.",
    "Describe step by step how a bicycle works, from the pedals to the wheels.",
    "Compare cats and dogs as pets: temperament, care, costs and lifestyle fit.",
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def messages_for(prompt: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


def schedule(n: int) -> list[int]:
    """Prompt indexes for n measured requests: the same sequence on every path."""
    return [i % len(PROMPTS) for i in range(n)]


@dataclass
class Sample:
    """One streamed request, timed on the client side (perf_counter seconds from the send)."""

    prompt_index: int
    ttft_s: float
    latency_s: float
    tokens: int
    text: str = field(default="", repr=False)
    server: dict | None = None  # the app's own stats for this request (TTFT, tok/s, queue wait)

    @property
    def decode_s(self) -> float:
        return self.latency_s - self.ttft_s

    @property
    def tpot_s(self) -> float | None:
        return self.decode_s / (self.tokens - 1) if self.tokens > 1 else None

    @property
    def tok_s(self) -> float | None:
        return (self.tokens - 1) / self.decode_s if self.tokens > 1 and self.decode_s > 0 else None

    def as_dict(self) -> dict:
        d = {"prompt_index": self.prompt_index, "ttft_ms": round(self.ttft_s * 1000, 3),
             "latency_s": round(self.latency_s, 4), "tokens": self.tokens,
             "tpot_ms": None if self.tpot_s is None else round(self.tpot_s * 1000, 3),
             "decode_tok_s": None if self.tok_s is None else round(self.tok_s, 3), "chars": len(self.text)}
        if self.server is not None:
            d["server"] = {k: self.server.get(k) for k in ("ttft_s", "tokens_per_s", "queue_wait_s", "e2e_s",
                                                           "prompt_tokens", "completion_tokens", "finish_reason")}
        return d
