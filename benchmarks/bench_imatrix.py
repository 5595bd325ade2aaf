"""What an importance matrix buys on the embedded model, measured by the lab itself in ONE run.

    python -m benchmarks.bench_imatrix                          # Q2_K, Q3_K_M, Q4_K_M; 2048 tokens
    python -m benchmarks.bench_imatrix --types Q2_K Q3_K_S --tokens 4096
    python -m benchmarks.bench_imatrix --calibration my.txt

The app computes the model's importance matrix (llama.cpp's method through the engine) from the
calibration text (default: the built-in one), then the lab's Evaluate (what ``/imatrix_gain`` runs)
scores each type with and without it, ``llamacpp:T`` and ``llamacpp:T+imatrix``, against
``llamacpp:F16`` on the lab's default evaluation text (Python standard-library docstrings), which the
calibration text does not overlap. Prints, per type: mean KLD without -> with and the change, p99 KLD,
top-1 agreement and PPL; and how long the matrix took. A fresh cache dir (``--cache-dir``, default a
temporary one) makes every file again.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="+", default=["Q2_K", "Q3_K_M", "Q4_K_M"], help="GGUF types to compare")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens of the evaluation text to score")
    ap.add_argument("--window", type=int, default=256, help="tokens per scored window")
    ap.add_argument("--calibration", default=None, help="calibration text file (default: the built-in text)")
    ap.add_argument("--cache-dir", default=None, help="where the variants and the matrix go (default: a temp dir)")
    args = ap.parse_args(argv)

    from backends.manager import ModelManager
    from monitoring.metrics import MetricsRecorder
    from optimization import imatrix
    from optimization.lab import Lab

    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="quantlab-bench-imatrix-"))
    lab = Lab(ModelManager(metrics=MetricsRecorder(), cache_dir=cache))
    t0 = time.perf_counter()
    rec = imatrix.compute(lab, "embedded", args.calibration)
    print(f"{rec['line']}: {time.perf_counter() - t0:.0f} s")
    rows = lab.evaluate("embedded", imatrix.imatrix_variants(args.types), reference=imatrix.IMATRIX_REFERENCE,
                        max_tokens=args.tokens, window=args.window, decode_tokens=0)
    print(f"\n{'type':<8}{'KLD without':>12}{'with':>9}{'change':>9}{'p99 without':>13}{'with':>8}"
          f"{'top-1 without':>15}{'with':>7}{'PPL without':>13}{'with':>8}")
    for g in imatrix.gain([r.as_dict() for r in rows]):
        print(f"{g['type']:<8}{g['kld_mean_without']:>12.4f}{g['kld_mean_with']:>9.4f}{g['kld_change_pct']:>8.1f}%"
              f"{g['kld_p99_without']:>13.3f}{g['kld_p99_with']:>8.3f}{g['top1_without'] * 100:>14.1f}%"
              f"{g['top1_with'] * 100:>6.1f}%{g['ppl_without']:>13.2f}{g['ppl_with']:>8.2f}")
    print(f"\n{rows[0].tokens} tokens scored against {imatrix.IMATRIX_REFERENCE}, windows of {args.window}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
