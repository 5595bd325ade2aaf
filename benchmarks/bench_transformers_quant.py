"""The transformers quantization methods on the embedded model, measured through the lab (one run):
weights MiB (monitoring/model_memory), KLD vs fp32 and top-1 on the lab's evaluation text, load
seconds, greedy decode tok/s. ``python -m benchmarks.bench_transformers_quant [variant ...]``"""

from __future__ import annotations

import argparse
import time

from backends.manager import ModelManager
from monitoring.metrics import MetricsRecorder
from optimization.lab import Lab

VARIANTS = ["transformers:torchao-int8wo", "transformers:quanto-int8", "transformers:quanto-int4",
            "transformers:nf4"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split(":")[0])
    ap.add_argument("variants", nargs="*", default=VARIANTS, metavar="variant",
                    help=f"backend:quantization labels (default: {' '.join(VARIANTS)})")
    variants = ap.parse_args(argv).variants
    lab = Lab(ModelManager(metrics=MetricsRecorder()))
    t0 = time.perf_counter()
    load_s: dict[str, float] = {}
    held_or_open = lab._held_or_open

    def timed(source, v):  # the load time each variant's backend measured (LoadedModel.load_seconds)
        lease, own = held_or_open(source, v)
        load_s[v.label] = lease.info.load_seconds
        return lease, own

    lab._held_or_open = timed

    def progress(f: float, m: str) -> None:
        if m.endswith("loading") or f >= 1.0:
            print(f"[{time.perf_counter() - t0:6.0f} s] {f:4.0%} {m}", flush=True)

    rows = lab.evaluate("embedded", variants, max_tokens=512, window=256, decode_tokens=16, progress=progress)
    print("\n| variant | weights MiB | KLD mean | KLD p99 | top-1 % | PPL | load s | decode tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        load = load_s.get(r.variant)
        print(f"| {r.variant} | {r.memory['weights_mib']:.1f} | {r.kld_mean:.4f} | {r.kld_p99:.3f} | "
              f"{100 * r.top1_agreement:.1f} | {r.ppl:.2f} | {f'{load:.1f}' if load is not None else '-'} | "
              f"{r.decode_tokens_per_s or 0:.1f} |")


if __name__ == "__main__":
    main()
