"""Speculative decoding (n-gram prompt lookup) vs plain decoding on the embedded model, in ONE run.

    python -m benchmarks.bench_speculative                 # llama.cpp, one slot, 200 tokens, 2 rounds
    python -m benchmarks.bench_speculative --parallel 4    # llama.cpp's batch engine (the app's default)
    python -m benchmarks.bench_speculative --backend transformers --tokens 100
    python -m benchmarks.bench_speculative --flash-attn off  # llama.cpp without flash attention (default: auto, on)
    python -m benchmarks.bench_speculative --tokens 100 --rounds 3 --draft 8

The same model is loaded twice with the chosen backend: plain, and with ``speculative="ngram"`` (what
``--speculative ngram`` gives). Each prompt's reply repeats its input (a code edit, a quoted word list),
greedy, ``--tokens`` new tokens. Requests alternate plain / speculative (never two at once), so load on
a shared machine hits both alike; one warm-up request each is not counted. Printed per prompt: decode
tok/s (tokens / wall time of the stream, median and best over the rounds), the speedup ratio, tokens
per CPU-second of this process (less sensitive to other load), the acceptance rate (accepted / drafted
tokens) and whether the two texts are identical (llama.cpp's kernels are not bit-identical across batch
shapes, so a near-tie can go the other way inside a verified draft; see backends/llamacpp/backend.py).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams

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


# --identity: varied chat prompts (not only repetitive ones), to count how often greedy text differs
IDENTITY_PROMPTS = [
    "Name three colours of the rainbow.", "Write the word 'hello' ten times separated by spaces.",
    "Explain what a hash table is in two sentences.", "Write a haiku about the sea.",
    "List the first ten prime numbers.", "What is the capital of France? Answer in one sentence.",
    "Write a Python function that reverses a string.", "Repeat after me: the quick brown fox jumps over the lazy dog.",
    "Describe a cat in three sentences.", "Count from 1 to 20 separated by commas.",
    "Give two tips for writing clean code.", "Translate 'good morning' into French, Spanish and German.",
]


def identity(plain, spec, tokens: int) -> None:
    """Greedy replies to IDENTITY_PROMPTS with and without speculative decoding: how many differ, and
    where (the first differing token of each)."""
    differ, first, total, accepted, drafted = 0, [], 0, 0, 0
    for prompt in IDENTITY_PROMPTS:
        req = ChatRequest((Message("user", prompt),), SamplingParams(max_new_tokens=tokens, temperature=0.0, seed=0))
        a = list(plain.stream(req, threading.Event()))
        b = list(spec.stream(req, threading.Event()))
        ta, tb = "".join(d.text for d in a), "".join(d.text for d in b)
        total += sum(d.tokens for d in a)
        accepted, drafted = accepted + b[-1].accepted_tokens, drafted + b[-1].draft_tokens
        if ta != tb:
            differ += 1
            pieces_a, pieces_b = [d.text for d in a if d.tokens], [d.text for d in b if d.tokens]
            first.append(next((i for i, (x, y) in enumerate(zip(pieces_a, pieces_b)) if x != y),
                              min(len(pieces_a), len(pieces_b))))
    print(f"\n[identity] {len(IDENTITY_PROMPTS)} prompts x {tokens} tokens ({total} plain tokens): "
          f"{differ} replies differ" + (f", first differing token at {sorted(first)}" if first else "") +
          f"; acceptance {accepted}/{drafted}")


def run(backend, prompt: str, tokens: int):
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
    ap.add_argument("--backend", choices=("llamacpp", "transformers"), default="llamacpp")
    ap.add_argument("--parallel", type=int, default=1, help="slots: >1 is llama.cpp's batch engine")
    ap.add_argument("--flash-attn", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                    help="llama.cpp flash attention: auto (the app's default: on for the CPU), on, off")
    ap.add_argument("--quantization", default=None, help="transformers: fp32 (default), bf16, ...")
    ap.add_argument("--identity", type=int, default=0, metavar="TOKENS",
                    help="instead of timing: count greedy replies that differ over 12 varied prompts of TOKENS tokens")
    args = ap.parse_args(argv)
    if args.backend == "transformers":
        from backends.hf.backend import TransformersBackend as Backend

        base = ModelSpec(source="embedded", backend="transformers", quantization=args.quantization or "fp32",
                         n_ctx=2048, parallel=args.parallel)
    else:
        from backends.llamacpp.backend import LlamaCppBackend as Backend

        base = ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048, parallel=args.parallel,
                         n_threads=args.threads, flash_attn=args.flash_attn,
                         prefix_cache=not args.identity)  # --identity: every prompt from a cold cache, repeatable
    plain, spec = Backend(), Backend()
    plain.load(base)
    info = spec.load(base.with_(speculative="ngram", spec_draft_tokens=args.draft))
    print(f"{args.backend}, parallel {args.parallel}, {info.details.get('file') or info.details.get('dtype')}, "
          f"threads {info.details.get('n_threads', 'torch')}, flash_attn {args.flash_attn}, {args.tokens} tokens "
          f"greedy, draft <= {args.draft}, {args.rounds} rounds")
    try:
        if args.identity:
            identity(plain, spec, args.identity)
            return 0
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
