"""One stream through the transformers backend's continuous batching vs plain ``generate``, in ONE run.

    python -m benchmarks.bench_transformers_batching [--tokens 64] [--rounds 6] [--dtype fp32]

Loads the embedded model's derived HF checkpoint once, then alternates, on the same model object and
the same prompt ids: ``model.generate`` under inference_mode on a thread that ends (as the app's
unbatched path and bench_serving's raw engine run it) and the app's ``ContinuousBatcher.stream()``
(no HTTP, no chat template, no detokenizing), greedy and sampled (temperature 0.7, top-k 40, top-p 0.95).

The batcher is built for each of its turns and closed after it: a live batcher keeps its generation
thread, and with it an OpenMP team, which halved a generate() beside it on a 2-core machine (measured;
presumably libgomp's throttling once a process holds more OpenMP threads than CPUs, as found for
llama.cpp in README.md), so generate() runs with none alive.

Speeds come from the gaps between consecutive tokens (prefill excluded). On a shared machine outside
load comes in bursts: the median gap moves with it, the 20th percentile mostly reflects the quiet
stretches; both are printed, with batcher / generate for each.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

from backends.base import SamplingParams
from backends.hf.batch import ContinuousBatcher
from benchmarks.common.hf_model import embedded_model, gaps, parse_args

MODES = {"greedy": SamplingParams(temperature=0.0),
         "sampled": SamplingParams(temperature=0.7, top_k=40, top_p=0.95)}


def generate_stamps(model, ids: list[int], tokens: int, params: SamplingParams) -> list[float]:
    """generate() on its own thread; a streamer stamps each new token as it exists."""
    import torch

    stamps: list[float] = []

    class Stamp:
        def put(self, value):
            stamps.append(time.perf_counter())

        def end(self):
            pass

    sample = ({"do_sample": False, "temperature": None, "top_k": None, "top_p": None} if params.greedy else
              {"do_sample": True, "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p})

    def run():
        with torch.inference_mode():  # as the app's unbatched path and bench_serving's raw engine run it
            model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                           max_new_tokens=tokens, min_new_tokens=tokens, streamer=Stamp(), **sample)

    worker = threading.Thread(target=run, name="bench-generate")
    worker.start()
    worker.join()
    return stamps[1:]  # the first put() is the prompt


def batcher_stamps(batcher, ids: list[int], tokens: int, params: SamplingParams) -> list[float]:
    return [time.perf_counter() for t, _ in batcher.stream(ids, params, tokens, threading.Event()) if t is not None]


def main() -> None:
    args = parse_args(__doc__, tokens=64, rounds=6)
    backend, model, ids, eos = embedded_model(args)
    generate_stamps(model, ids, 8, MODES["greedy"])  # warm-up
    found: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for mode, params in MODES.items():
            g = gaps(generate_stamps(model, ids, args.tokens, params))
            batcher = ContinuousBatcher(model, 4, 1024, eos, prefix_cache=False)
            try:
                batcher_stamps(batcher, ids, 4, params)  # warm-up
                b = gaps(batcher_stamps(batcher, ids, args.tokens, params))
            finally:
                batcher.close()
            found.setdefault((mode, "generate"), []).extend(g)
            found.setdefault((mode, "batcher"), []).extend(b)
            print(f"  round {r} {mode:7s} generate {1 / statistics.median(g):6.2f} tok/s, "
                  f"batcher {1 / statistics.median(b):6.2f} tok/s (median gap), load avg {os.getloadavg()[0]:.2f}",
                  flush=True)
    for mode in MODES:
        g, b = found[(mode, "generate")], found[(mode, "batcher")]
        (g_med, b_med), (g_p20, b_p20) = ((f(g), f(b)) for f in (statistics.median,
                                                                  lambda x: statistics.quantiles(x, n=5)[0]))
        print(f"{mode:7s}: tok/s from the median gap: generate {1 / g_med:6.2f}, batcher {1 / b_med:6.2f}, "
              f"batcher / generate = {g_med / b_med:.3f}; from the 20th percentile gap: generate {1 / g_p20:6.2f}, "
              f"batcher {1 / b_p20:6.2f}, batcher / generate = {g_p20 / b_p20:.3f}")
    backend.unload()


if __name__ == "__main__":
    main()
