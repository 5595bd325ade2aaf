"""A generate() beside a live continuous batcher, three ways, in ONE run, alternating.

    python -m benchmarks.bench_transformers_fallback [--tokens 48] [--rounds 4] [--dtype fp32]

What the batch cannot honour (repetition penalty, constraints, logprobs, ...) runs on plain
``model.generate``. Each round, on the same model object and prompt ids (greedy, inference_mode):

  none    no batcher in the process; generate() on a thread that ends (the app without batching)
  thread  a batcher alive and idle; generate() on a thread that ends (the app before the fix)
  loop    a batcher alive and idle; generate() on its generation thread, between steps
          (``ContinuousBatcher.submit``, the app after the fix)

and prints the OS threads of the process during each generate() (libgomp keeps an OpenMP team per
calling thread: the suspected cause is two teams, hence more OpenMP threads than CPUs, hence
throttling), the time to build a batcher (what stopping and restarting its thread around each
fallback would cost), and each speed over ``none``. Speeds come from the gaps between consecutive
tokens (prefill excluded), median and 20th percentile (the quiet stretches on a shared machine).
"""

from __future__ import annotations

import os
import statistics
import threading
import time

from backends.hf.batch import ContinuousBatcher
from benchmarks.common.hf_model import embedded_model, gaps, parse_args


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def generate_call(model, ids: list[int], tokens: int, stamps: list[float], threads: list[int]):
    import torch

    class Stamp:
        def put(self, value):
            stamps.append(time.perf_counter())
            if len(stamps) == 4:  # mid-generation: every team that exists now is alive
                threads.append(os_threads())

        def end(self):
            pass

    def run():
        with torch.inference_mode():
            model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                           max_new_tokens=tokens, min_new_tokens=tokens, streamer=Stamp(), do_sample=False,
                           temperature=None, top_k=None, top_p=None)
    return run


def on_thread(fn) -> None:
    worker = threading.Thread(target=fn, name="bench-generate")
    worker.start()
    worker.join()


def main() -> None:
    args = parse_args(__doc__, tokens=48, rounds=4)
    backend, model, ids, eos = embedded_model(args)
    on_thread(generate_call(model, ids, 8, [], []))  # warm-up
    print(f"OS threads, no batcher, idle: {os_threads()}")
    found: dict[str, list[float]] = {}
    threads: dict[str, list[int]] = {}
    builds: list[float] = []

    def measure(name: str, runner) -> float:
        stamps: list[float] = []
        runner(generate_call(model, ids, args.tokens, stamps, threads.setdefault(name, [])))
        g = gaps(stamps[1:])  # the first put() is the prompt
        found.setdefault(name, []).extend(g)
        return 1 / statistics.median(g)

    for r in range(args.rounds):
        none = measure("none", on_thread)
        t0 = time.perf_counter()
        batcher = ContinuousBatcher(model, 4, 1024, eos, prefix_cache=False)
        builds.append(time.perf_counter() - t0)
        try:
            idle = os_threads()
            thread = measure("thread", on_thread)
            loop = measure("loop", lambda fn: batcher.submit(fn).result())
        finally:
            batcher.close()
        print(f"  round {r}: none {none:6.2f}, thread {thread:6.2f}, loop {loop:6.2f} tok/s (median gap); "
              f"batcher built in {builds[-1]:.2f} s, OS threads with it idle {idle}; "
              f"load avg {os.getloadavg()[0]:.2f}", flush=True)
    base_med, base_p20 = statistics.median(found["none"]), statistics.quantiles(found["none"], n=5)[0]
    for name in ("none", "thread", "loop"):
        g = found[name]
        med, p20 = statistics.median(g), statistics.quantiles(g, n=5)[0]
        print(f"{name:6s}: {1 / med:6.2f} tok/s (median gap), {1 / p20:6.2f} (20th pct gap); / none: "
              f"{base_med / med:.3f}, {base_p20 / p20:.3f}; OS threads during generate(): {sorted(set(threads[name]))}")
    print(f"batcher build: median {statistics.median(builds):.2f} s")
    backend.unload()


if __name__ == "__main__":
    main()
