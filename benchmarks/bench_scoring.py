"""The lab's Evaluate figures beside llama.cpp's own ``llama-perplexity --kl-divergence``, in ONE run.

    python -m benchmarks.bench_scoring                       # chunks of 512, 4 chunks, Q8_0 Q4_K_M Q2_K
    python -m benchmarks.bench_scoring --window 256 --chunks 16 --quants Q8_0,Q4_K_M

The embedded model's variants are made by the app's own requantizer (the same files the lab loads);
the reference is ``llamacpp:F16`` (the dequantized Q4_1: the embedded source is already quantized).
Evaluate runs twice, ``scoring="all"`` (every position of each window) and ``scoring="llama.cpp"``
(llama-perplexity's chunks from BOS, second half scored); then llama-perplexity scores the same
text and files (``--kl-divergence-base`` from the F16, ``-c window --chunks N``, ``-fa on`` as the
app loads by default (its ``auto`` is on for the CPU, as the tool's own ``-fa auto``; flash attention
alone moves Q8_0's mean KLD from 0.00406 to 0.00450 at 4 chunks of 512, so both must use the same);
and ``--no-repack`` on AMX CPUs, where the
app loads without llama.cpp's repacked weight layouts (backends/llamacpp/open.py): repacked q4_K
kernels alone move Q4_K_M's KLD by 2 %). Printed: one row
per variant with PPL, mean and p99 KLD, top-1 agreement from each, and the ratio app / tool in the
llama.cpp mode. Needs llama-perplexity (benchmarks/build_llama_tools.sh); without it the app's two
modes are printed alone.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from backends.files.gguf import gguf_variant
from backends.llamacpp.open import safe_model_params
from backends.manager import ModelManager
from backends.files.sources import default_cache_dir, embedded_model_path
from monitoring.metrics import MetricsRecorder
from optimization import quality
from optimization.lab import Lab


def find_tool(name: str) -> Path | None:
    for d in (os.environ.get("QUANTLAB_LLAMA_TOOLS"), Path.home() / ".cache/quantlab-tools/bin"):
        if d and (Path(d) / name).is_file():
            return Path(d) / name
    return None


def run_tool(binary: Path, window: int, chunks: int, threads: int, *args: str) -> str:
    same_as_app = ["-fa", "on", *(["--no-repack"] if safe_model_params() else [])]
    out = subprocess.run([str(binary), "-c", str(window), "--chunks", str(chunks), "-t", str(threads), *same_as_app, *args],
                         capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise SystemExit(f"llama-perplexity failed:\n{out.stderr[-2000:]}")
    return out.stdout + out.stderr


def figure(log: str, pattern: str) -> float:
    m = re.search(pattern + r"\s*:\s*([-\d.]+)", log)
    if not m:
        raise SystemExit(f"{pattern!r} not in llama-perplexity's output:\n{log[-3000:]}")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--quants", default="Q8_0,Q4_K_M,Q2_K")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    cache = default_cache_dir()
    embedded = embedded_model_path()
    work = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    text = work / "stdlib.txt"
    text.write_text(quality.stdlib_text(), encoding="utf-8")

    lab = Lab(ModelManager(cache_dir=cache, metrics=MetricsRecorder()))
    app: dict[str, dict] = {}
    for scoring in ("all", "llama.cpp"):
        print(f"[app] Evaluate scoring={scoring} ...", file=sys.stderr)
        rows = lab.evaluate("embedded", [f"llamacpp:{q}" for q in quants], reference="llamacpp:F16",
                            text_path=str(text), max_tokens=args.window * args.chunks, window=args.window,
                            decode_tokens=0, scoring=scoring)
        app[scoring] = {r.quantization: r for r in rows}

    tool: dict[str, tuple[float, float, float, float]] = {}
    binary = find_tool("llama-perplexity")
    if binary is not None:
        files = {q: gguf_variant(embedded, q, cache) for q in ("F16", *quants)}
        base = work / "f16.kld"
        print("[tool] llama-perplexity F16 base ...", file=sys.stderr)
        run_tool(binary, args.window, args.chunks, args.threads, "-m", str(files["F16"]), "-f", str(text),
                 "--kl-divergence-base", str(base))
        for q in quants:
            print(f"[tool] llama-perplexity {q} ...", file=sys.stderr)
            log = run_tool(binary, args.window, args.chunks, args.threads, "-m", str(files[q]),
                           "--kl-divergence-base", str(base), "--kl-divergence")
            tool[q] = (figure(log, r"Mean PPL\(Q\)"), figure(log, r"Mean    KLD"), figure(log, r"99\.0%   KLD"),
                       figure(log, r"Same top p") / 100)

    print(f"\nEmbedded SmolLM2-135M (source Q4_1), reference llamacpp:F16, {args.chunks} chunks of {args.window} tokens")
    print("| scoring | variant | PPL | KLD mean | KLD p99 | top-1 % | memory MiB |")
    print("|---|---|---|---|---|---|---|")
    for scoring in ("all", "llama.cpp"):
        ref = next(r for r in app[scoring].values() if r.is_reference)
        print(f"| app {scoring} | F16 (reference) | {ref.ppl:.3f} | - | - | - | {ref.footprint_mib:.1f} |")
        for q in quants:
            r = app[scoring][q]
            print(f"| app {scoring} | {q} | {r.ppl:.3f} | {r.kld_mean:.5f} | {r.kld_p99:.4f} | "
                  f"{100 * r.top1_agreement:.2f} | {r.footprint_mib:.1f} |")
    for q in quants if tool else ():
        ppl, kld, p99, top = tool[q]
        print(f"| llama-perplexity | {q} | {ppl:.3f} | {kld:.5f} | {p99:.4f} | {100 * top:.2f} | - |")
    if tool:
        print("\napp (scoring=llama.cpp) / llama-perplexity:")
        for q in quants:
            r, (ppl, kld, _p99, top) = app["llama.cpp"][q], tool[q]
            print(f"  {q:7s} PPL {r.ppl / ppl:.4f}  KLD {r.kld_mean / kld:.4f}  "
                  f"top-1 {100 * (r.top1_agreement - top):+.2f} points")
    else:
        print("\n(llama-perplexity not found: benchmarks/build_llama_tools.sh builds it)")


if __name__ == "__main__":
    main()
