"""KV-cache quantization on the embedded model: what a q8_0 / q4_0 KV cache costs in quality and
saves in memory, measured by the lab itself, in ONE run.

    python -m benchmarks.bench_kv_cache                       # Q8_0 weights, KV f16/q8_0/q4_0, 2048 tokens
    python -m benchmarks.bench_kv_cache --weights Q4_K_M --tokens 4096
    python -m benchmarks.bench_kv_cache --no-tool             # without llama-perplexity's figures

The lab's Evaluate (``Lab.evaluate``, what ``/evaluate`` runs) scores ``llamacpp:<weights>+kv:<type>``
for each KV type against ``llamacpp:F16`` (the F16 the variants are made from) on the lab's default
text (Python standard-library docstrings), ``--tokens`` tokens in windows of ``--window``, with both
scorings: "all" (every position) and "llama.cpp" (llama-perplexity's chunks, second half scored).
Columns: the KV cache's bytes at n_ctx 2048 x 1 slot (the lab's load), mean and p99 KLD, top-1
agreement, PPL.

With llama-perplexity (``--tool PATH``, else QUANTLAB_LLAMA_TOOLS or ~/.cache/quantlab-tools/bin),
the same GGUF files, text and chunks go through it too (``--kl-divergence-base`` from the F16 first,
then ``-ctk/-ctv TYPE --kl-divergence``; flash attention on, as the app loads them by default: its
``auto`` is on for the CPU, and quantized types need it), and its figures, KV size included (its "llama_kv_cache: size" line), print
beside the app's "llama.cpp" rows.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from backends.base import KV_CACHE_TYPES
from backends.files.gguf import gguf_variant
from backends.manager import ModelManager
from backends.files.sources import default_cache_dir, embedded_model_path
from monitoring.metrics import MetricsRecorder
from optimization import quality
from optimization.lab import Lab

REFERENCE = "llamacpp:F16"


def find_tool(given: str | None) -> Path | None:
    for d in (given, os.environ.get("QUANTLAB_LLAMA_TOOLS"), Path.home() / ".cache/quantlab-tools/bin"):
        if d and Path(d).is_file():
            return Path(d)
        if d and (Path(d) / "llama-perplexity").is_file():
            return Path(d) / "llama-perplexity"
    return None


def figure(log: str, pattern: str) -> float | None:
    m = re.search(pattern + r"\s*:\s*([-\d.]+)", log)
    return float(m.group(1)) if m else None


def run_tool(binary: Path, window: int, chunks: int, threads: int, *args: str) -> str:
    cmd = [str(binary), "-c", str(window), "-b", str(window), "--chunks", str(chunks), "-t", str(threads), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(out.stdout + out.stderr)[-2000:]}")
    return out.stdout + out.stderr


def tool_rows(binary: Path, cache_dir: Path, weights: str, window: int, tokens: int, threads: int) -> dict:
    """{kv type: {kv_mib, kld_mean, kld_p99, top1, ppl}} from llama-perplexity on the lab's files."""
    src = embedded_model_path()
    files = {q: gguf_variant(src, q, cache_dir) for q in ("F16", weights)}
    chunks = max(tokens // window, 1)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-kv-") as tmp:
        text = Path(tmp) / "stdlib.txt"
        text.write_text(quality.stdlib_text(), encoding="utf-8")
        base = Path(tmp) / "f16.kld"
        run_tool(binary, window, chunks, threads, "-m", str(files["F16"]), "-f", str(text), "-fa", "on",
                 "--kl-divergence-base", str(base))
        for kv in KV_CACHE_TYPES:
            log = run_tool(binary, window, chunks, threads, "-m", str(files[weights]), "--kl-divergence-base",
                           str(base), "--kl-divergence", "-ctk", kv, "-ctv", kv, "-fa", "on",
                           "-v")  # -v: llama.cpp's own lines, its KV cache size among them
            m = re.search(r"llama_kv_cache: size =\s*([\d.]+) MiB", log)
            rows[kv] = {"kv_mib": float(m.group(1)) if m else None, "kld_mean": figure(log, r"Mean    KLD"),
                        "kld_p99": figure(log, r"99\.0%   KLD"), "top1": figure(log, r"Same top p"),
                        "ppl": figure(log, r"Mean PPL\(Q\)")}
    return rows


def fmt(x, spec: str) -> str:
    return format(x, spec) if x is not None else "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="Q8_0", help="the variants' weight quantization (default Q8_0)")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens of the text to score (default 2048)")
    ap.add_argument("--window", type=int, default=2048, help="tokens per window / chunk (default 2048)")
    ap.add_argument("--threads", type=int, default=2, help="llama-perplexity threads (default 2)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="where the GGUF variants go (default: the app's)")
    ap.add_argument("--tool", default=None, help="llama-perplexity binary or its folder")
    ap.add_argument("--no-tool", action="store_true", help="skip llama-perplexity")
    args = ap.parse_args(argv)

    cache_dir = args.cache_dir or default_cache_dir()
    lab = Lab(ModelManager(metrics=MetricsRecorder(), cache_dir=cache_dir))
    names = [f"llamacpp:{args.weights}+kv:{kv}" for kv in KV_CACHE_TYPES]
    results = {}
    for scoring in ("all", "llama.cpp"):
        t0 = time.perf_counter()
        rows = lab.evaluate("embedded", names, reference=REFERENCE, max_tokens=args.tokens, window=args.window,
                            decode_tokens=0, scoring=scoring)
        results[scoring] = ({r.variant: r for r in rows}, time.perf_counter() - t0)

    binary = None if args.no_tool else find_tool(args.tool)
    tool = tool_rows(binary, cache_dir, args.weights, args.window, args.tokens, args.threads) if binary else {}

    print(f"\nKV cache quantization: embedded SmolLM2-135M, {args.weights} weights, reference {REFERENCE}, "
          f"stdlib text, {args.tokens} tokens in windows of {args.window}; KV at n_ctx 2048 x 1 slot")
    head = (f"{'scoring':10s} {'variant':26s} {'KV MiB':>7s} {'KLD mean':>9s} {'KLD p99':>8s} {'top-1 %':>8s} "
            f"{'PPL':>8s}")
    if tool:
        head += f"  | llama-perplexity: {'KV MiB':>7s} {'KLD mean':>9s} {'KLD p99':>8s} {'top-1 %':>8s} {'PPL':>8s}"
    print(head)
    for scoring, (rows, seconds) in results.items():
        for name in [REFERENCE, *names]:
            r = rows[name]
            line = (f"{scoring:10s} {name:26s} {r.memory['kv_bytes'] / 2**20:7.2f} {r.kld_mean:9.5f} {r.kld_p99:8.4f} "
                    f"{100 * r.top1_agreement:8.2f} {r.ppl:8.3f}")
            kv = name.rpartition("+kv:")[2] if "+kv:" in name else None
            if tool and scoring == "llama.cpp" and kv in tool:
                t = tool[kv]
                line += (f"  | {'':17s} {fmt(t['kv_mib'], '7.2f')} {fmt(t['kld_mean'], '9.5f')} "
                         f"{fmt(t['kld_p99'], '8.4f')} {fmt(t['top1'], '8.2f')} {fmt(t['ppl'], '8.3f')}")
            print(line)
        print(f"{'':10s} ({rows[names[0]].tokens} positions scored per variant, {seconds:.0f} s)")
    f16 = results["all"][0][names[0]]
    for name in names[1:]:
        r = results["all"][0][name]
        print(f"{name}: KV {r.memory['kv_bytes'] / f16.memory['kv_bytes']:.3f}x of f16's, "
              f"KLD {r.kld_mean / f16.kld_mean:.2f}x of f16's (scoring all)")
    if not tool and not args.no_tool:
        print("llama-perplexity not found (benchmarks/build_llama_tools.sh builds it): its columns are left out")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
