"""What the app spends beside the engine, in figures that hold on a busy machine (issue 16).

Two measurements, both counts rather than speeds, so outside load on a shared CPU moves them little:

1. ``idle``: CPU seconds the app process (``python app.py``, the embedded model loaded, no requests)
   burns per wall second: the event loop's own polling, which on a CPU-only server is taken from the
   engine's threads.
2. ``steps``: the llama.cpp batch scheduler's decode steps while N /v1 clients share the model's
   slots (the app in-process, ``BatchEngine._step`` timed): steps taken vs the fewest possible
   (ceil(N / slots) waves x tokens), how many decoding sequences each step carried, and the time the
   scheduler spent between steps (Python work: sampling, detokenizing, admitting, queue hand-off).

    python -m benchmarks.bench_overhead --idle-s 15 --clients 8 --max-tokens 32
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import time


def app_args(parallel: int = 4) -> argparse.Namespace:
    """The app as the serving benchmark starts it by default: llama.cpp, the embedded model, 2048 tokens of
    context, a thread per physical core, no host-memory prompt cache; ``parallel`` batch slots."""
    from backends.threads import physical_cores

    return argparse.Namespace(backend="llamacpp", model=None, n_ctx=2048, threads=physical_cores(), parallel=parallel,
                              prompt_cache_mib=0, dtype=None)


def idle_cpu(seconds: float) -> dict:
    import psutil

    from benchmarks.common import harness

    args = app_args()
    with harness.AppSubprocess(args) as srv:
        srv.load(harness.app_spec(args))
        proc = psutil.Process(srv.pid)
        time.sleep(2)
        c0, t0 = proc.cpu_times(), time.perf_counter()
        time.sleep(seconds)
        c1, t1 = proc.cpu_times(), time.perf_counter()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"seconds": t1 - t0, "cpu_s": cpu, "core_fraction": cpu / (t1 - t0)}


def steps(clients: int, max_tokens: int, parallel: int) -> dict:
    from backends.llamacpp import batch as llamacpp_batch
    from benchmarks.common import clients as bench_clients
    from benchmarks.common import harness

    log: list[tuple[float, float, int]] = []
    step = llamacpp_batch.BatchEngine._step

    def timed_step(self):
        decoding = sum(1 for s in self._running if s.prefill == len(s.tokens))
        t = time.perf_counter()
        step(self)
        log.append((t, time.perf_counter() - t, decoding))

    llamacpp_batch.BatchEngine._step = timed_step
    try:
        args = app_args(parallel)
        with harness.InProcessApp(args.n_ctx, args.threads) as srv:
            srv.load(harness.app_spec(args))
            bench_clients.concurrency_level(srv.url, "default", 2, 2, 8)  # warm-up
            log.clear()
            level = bench_clients.concurrency_level(srv.url, "default", clients, clients, max_tokens)
    finally:
        llamacpp_batch.BatchEngine._step = step
    gaps = [log[i + 1][0] - (log[i][0] + log[i][1]) for i in range(len(log) - 1)]
    in_steps = sum(x[1] for x in log)
    return {
        "clients": clients, "slots": parallel, "output_tokens": level["output_tokens"], "errors": level["errors"],
        "steps": len(log), "fewest_steps": math.ceil(clients / parallel) * max_tokens,
        "decoding_per_step": dict(sorted(collections.Counter(x[2] for x in log).items())),
        "in_steps_s": in_steps, "between_steps_s": sum(gaps),
        "between_fraction": sum(gaps) / (in_steps + sum(gaps)) if log else None,
        "wall_s": level["wall_s"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle-s", type=float, default=15.0, help="seconds to watch the idle app (0: skip)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent /v1 clients for the step count (0: skip)")
    ap.add_argument("--parallel", type=int, default=4, help="the app's batch slots")
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args(argv)
    if a.idle_s > 0:
        r = idle_cpu(a.idle_s)
        print(f"idle app: {r['cpu_s']:.3f} CPU-s in {r['seconds']:.1f} s = {100 * r['core_fraction']:.2f}% of a core",
              flush=True)
    if a.clients > 0:
        r = steps(a.clients, a.max_tokens, a.parallel)
        print(f"{r['clients']} clients on {r['slots']} slots, {r['output_tokens']} tokens: {r['steps']} decode steps "
              f"(fewest possible {r['fewest_steps']}); decoding sequences per step {r['decoding_per_step']}; "
              f"scheduler between steps {1000 * r['between_steps_s']:.1f} ms = {100 * r['between_fraction']:.2f}% "
              f"of {r['in_steps_s'] + r['between_steps_s']:.1f} s; errors {len(r['errors'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
