"""Fair queueing under load: N streaming /v1 clients at once on S batch slots, the app (and llama-server).

    python -m benchmarks.bench_fairness                        # 20 clients, 4 slots, 64 tokens, the app as `python app.py`
    python -m benchmarks.bench_fairness --llama-server ~/.cache/quantlab-tools/bin/llama-server

Every client sends one request at the same moment (a barrier), greedy, ``--max-tokens`` each. Per
request: TTFT (client side: the wait for a slot plus prefill) and its generation time (latency - TTFT).
The issue's bound: nobody waits longer than ceil(N/S) x the longest generation + 10 %, i.e. a request
is never overtaken so often that it misses its wave. While the run lasts, /metrics is read every 50 ms
for ``quantlab:num_requests_waiting`` (the app only), and its peak is printed beside the number of
requests that could not have had a slot (N - S). Ratios and waits come from this one run.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import clients, harness
from benchmarks.common.workload import PROMPTS, WARMUP_PROMPT, log
from monitoring.stats import percentile


def burst(url: str, model: str, n: int, max_tokens: int) -> list:
    """``n`` clients, one request each, released together. Returns their Samples."""
    barrier, lock, samples, errors = threading.Barrier(n + 1), threading.Lock(), [], []

    def one(i: int) -> None:
        oai = clients.openai_client(url)
        barrier.wait()
        try:
            s = clients.v1_request(oai, model, i % len(PROMPTS), f"({i + 1}) {PROMPTS[i % len(PROMPTS)]}", max_tokens)
            with lock:
                samples.append(s)
        except Exception as exc:  # noqa: BLE001 - reported
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            oai.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} requests failed, e.g. {errors[0]}")
    return samples


def waiting_peak(url: str, stop: threading.Event, out: list) -> None:
    import httpx

    peak = 0
    with httpx.Client(timeout=5) as http:
        while not stop.is_set():
            try:
                text = http.get(f"{url}/metrics").text
                for m in re.finditer(r"^quantlab:num_requests_waiting\{[^}]*\} ([0-9.e+]+)$", text, re.M):
                    peak = max(peak, int(float(m.group(1))))
            except httpx.HTTPError:
                pass
            stop.wait(0.05)
    out.append(peak)


def summary(label: str, samples: list, n: int, slots: int) -> dict:
    waits = [s.ttft_s for s in samples]
    gens = [s.decode_s for s in samples]
    bound = math.ceil(n / slots) * max(gens) * 1.1
    row = {"label": label, "ttft_p50_s": percentile(waits, 50), "ttft_p90_s": percentile(waits, 90),
           "ttft_max_s": max(waits), "longest_generation_s": max(gens), "bound_s": bound,
           "max_over_bound": max(waits) / bound, "wall_s": max(s.latency_s for s in samples)}
    log(f"{label}: TTFT p50 {row['ttft_p50_s']:.2f} s, p90 {row['ttft_p90_s']:.2f} s, max {row['ttft_max_s']:.2f} s; "
        f"bound {bound:.2f} s")
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--parallel", type=int, default=4, help="batch slots (the app's --parallel, llama-server's -np)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--llama-server", metavar="PATH")
    p.add_argument("--prompt-cache-mib", type=int, default=0, help="the app's, and llama-server's --cache-ram (0: off)")
    args = p.parse_args()
    from backends.threads import physical_cores

    args.threads = args.threads or physical_cores()
    args.backend, args.model, args.dtype = "llamacpp", None, None
    rows = []
    with harness.AppSubprocess(args) as app:
        app.load(None)
        oai = clients.openai_client(app.url)
        model = oai.models.list().data[0].id
        clients.v1_request(oai, model, -1, WARMUP_PROMPT, 8)
        oai.close()
        stop, peak = threading.Event(), []
        poller = threading.Thread(target=waiting_peak, args=(app.url, stop, peak), daemon=True)
        poller.start()
        samples = burst(app.url, model, args.clients, args.max_tokens)
        stop.set()
        poller.join()
        rows.append(summary("app /v1", samples, args.clients, args.parallel) | {"waiting_peak": peak[0]})
    if args.llama_server:
        from backends.files.sources import embedded_model_path

        with harness.LlamaServer(args.llama_server, embedded_model_path(), args.n_ctx, args.threads,
                                 args.parallel, args.prompt_cache_mib) as server:
            server.wait_ready()
            oai = clients.openai_client(server.url)
            clients.v1_request(oai, server.model_name, -1, WARMUP_PROMPT, 8)
            oai.close()
            rows.append(summary("llama-server /v1", burst(server.url, server.model_name, args.clients, args.max_tokens),
                                args.clients, args.parallel))
    print(f"\n{args.clients} streaming clients at once on {args.parallel} slots, {args.max_tokens} tokens each, "
          f"greedy, {args.threads} threads, load avg {os.getloadavg()[0]:.2f}")
    print(f"{'server':18} {'TTFT p50':>9} {'p90':>7} {'max':>7} {'longest gen':>12} {'bound':>7} {'max/bound':>10} {'wall':>7}")
    for r in rows:
        print(f"{r['label']:18} {r['ttft_p50_s']:8.2f}s {r['ttft_p90_s']:6.2f}s {r['ttft_max_s']:6.2f}s "
              f"{r['longest_generation_s']:11.2f}s {r['bound_s']:6.2f}s {r['max_over_bound']:10.2f} {r['wall_s']:6.2f}s")
    print(f"app /metrics num_requests_waiting peak: {rows[0]['waiting_peak']} "
          f"(requests beyond the slots: {max(0, args.clients - args.parallel)})")
    return 0 if rows[0]["max_over_bound"] <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
