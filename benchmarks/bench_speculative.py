#!/usr/bin/env python
"""Speculative decoding (n-gram prompt lookup) vs plain decoding on the embedded model, in ONE run.

    python benchmarks/bench_speculative.py                 # 200 tokens, 2 rounds, both prompts
    python benchmarks/bench_speculative.py --tokens 100 --rounds 3 --draft 8

The same GGUF is loaded twice with llama.cpp, one slot each: plain, and with ``speculative="ngram"``
(what ``--speculative ngram`` gives). Each prompt's reply repeats its input (a code edit, a quoted
word list), greedy, ``--tokens`` new tokens. Requests alternate plain / speculative (never two at
once), so load on a shared machine hits both alike; one warm-up request each is not counted.
Printed per prompt: decode tok/s (tokens / wall time of the stream, median and best over the
rounds), the speedup ratio, tokens per CPU-second of this process (less sensitive to other load), the acceptance rate (accepted / drafted tokens) and whether the two
texts are identical (llama.cpp's kernels are not bit-identical across batch shapes, so a near-tie
can go the other way inside a verified draft; see backends/llamacpp.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams  # noqa: E402
from backends.llamacpp import LlamaCppBackend  # noqa: E402

CODE = '''def compute_total(items, tax_rate):
    """Sum price * quantity over the items, then add tax."""
    total = 0
    for item in items:
        price = item["price"]
        qty = item["quantity"]
        if qty < 0:
            raise ValueError("negative quantity")
        total += price * qty
    tax = total * tax_rate
    return round(total + tax, 2)


def average_price(items):
    if not items:
        return 0.0
    prices = [item["price"] for item in items]
    return sum(prices) / len(prices)


def most_expensive(items):
    best = None
    for item in items:
        if best is None or item["price"] > best["price"]:
            best = item
    return best


def describe(item):
    name = item.get("name", "unknown")
    return f"{name}: {item['price']} x {item['quantity']}"
'''

PROMPTS = {
    "code-edit": "Repeat this code exactly, changing the function name compute_total to foo:\n\n" + CODE,
    "quote-list": "Copy this list exactly, one item per line: apple, banana, cherry, date, elderberry, fig, grape, "
                  "honeydew, kiwi, lemon, mango, nectarine, orange, papaya, quince, raspberry, strawberry, "
                  "tangerine, watermelon.",
}


def run(backend: LlamaCppBackend, prompt: str, tokens: int):
    req = ChatRequest((Message("user", prompt),), SamplingParams(max_new_tokens=tokens, temperature=0.0, seed=0))
    t0, c0 = time.perf_counter(), time.process_time()
    deltas = list(backend.stream(req, threading.Event()))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = sum(d.tokens for d in deltas)
    return "".join(d.text for d in deltas), n, n / dt, n / cpu, deltas[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--draft", type=int, default=8, help="--spec-draft-tokens")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prompts", default=",".join(PROMPTS), help="comma-separated: " + ", ".join(PROMPTS))
    args = ap.parse_args(argv)
    base = ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048, parallel=1, n_threads=args.threads)
    plain, spec = LlamaCppBackend(), LlamaCppBackend()
    plain.load(base)
    info = spec.load(base.with_(speculative="ngram", spec_draft_tokens=args.draft))
    print(f"model {info.details['file']}, threads {info.details['n_threads']}, {args.tokens} tokens greedy, "
          f"draft <= {args.draft}, {args.rounds} rounds")
    try:
        run(plain, "Hi", 4), run(spec, "Hi", 4)  # warm-up
        for name in args.prompts.split(","):
            prompt = PROMPTS[name]
            p_speed, s_speed, p_cpu, s_cpu, drafted, accepted, same = [], [], [], [], 0, 0, True
            for _ in range(args.rounds):
                p_text, p_n, p_tps, p_tpc, _ = run(plain, prompt, args.tokens)
                s_text, s_n, s_tps, s_tpc, last = run(spec, prompt, args.tokens)
                p_speed.append(p_tps)
                s_speed.append(s_tps)
                p_cpu.append(p_tpc)
                s_cpu.append(s_tpc)
                drafted, accepted = drafted + last.draft_tokens, accepted + last.accepted_tokens
                same = same and s_text == p_text
            med_p, med_s = statistics.median(p_speed), statistics.median(s_speed)
            print(f"\n[{name}] {p_n} tokens (plain), {s_n} (speculative)")
            print(f"  plain       tok/s median {med_p:6.1f}  best {max(p_speed):6.1f}")
            print(f"  speculative tok/s median {med_s:6.1f}  best {max(s_speed):6.1f}")
            print(f"  speedup median {med_s / med_p:.2f}x  best-vs-best {max(s_speed) / max(p_speed):.2f}x")
            cp, cs = statistics.median(p_cpu), statistics.median(s_cpu)
            print(f"  tokens per CPU-second (steadier on a shared machine): plain {cp:.1f}, speculative {cs:.1f}, "
                  f"ratio {cs / cp:.2f}x")
            rate = accepted / drafted if drafted else 0.0
            print(f"  acceptance {rate:.0%} ({accepted}/{drafted} drafted tokens)")
            print(f"  texts identical: {same}")
            if not same:
                cut = next((i for i, (a, b) in enumerate(zip(p_text, s_text)) if a != b), min(len(p_text), len(s_text)))
                print(f"  first difference at char {cut}: plain {p_text[cut:cut + 40]!r} vs speculative {s_text[cut:cut + 40]!r}")
    finally:
        plain.unload()
        spec.unload()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
