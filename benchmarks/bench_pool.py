"""The model pool's costs, through the real server and /v1 (streamed, greedy):

1. time to first token of a request whose model must be loaded first (cold) vs one already resident;
2. an alternating A/B request stream under ``--models-max 1`` (every request evicts and loads) vs ``2``.

The two models are copies of the embedded GGUF in a temporary --models-dir. Ratios are printed from one
run; absolute times depend on the machine and on what else runs on it.

    python -m benchmarks.bench_pool [--requests 8] [--max-tokens 16] [--warm 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import backends.omp_env  # noqa: F401 - the OpenMP wait policy, before any engine library loads


def ttft_and_total(url: str, model: str, max_tokens: int) -> tuple[float, float]:
    """(seconds to the first content chunk, seconds to the end) of one streamed chat request."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": "Name three colours."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    first = None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - t0
    return (first if first is not None else time.perf_counter() - t0), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8, help="requests in the alternating A/B stream")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--warm", type=int, default=3, help="resident requests whose TTFT is the warm median")
    args = ap.parse_args()

    from app import LiveServer, free_port
    from backends.files.sources import embedded_model_path
    from serving.settings import Settings

    def make_settings(**overrides):
        return Settings(port=free_port(), no_model=True, n_ctx=2048, **overrides)

    work = Path(tempfile.mkdtemp(prefix="quantlab-bench-pool-"))
    try:
        models = work / "models"
        models.mkdir()
        for name in ("alpha", "beta"):
            shutil.copyfile(embedded_model_path(), models / f"{name}.gguf")
        with LiveServer(make_settings(cache_dir=work / "cache", models_dir=models, models_max=2)) as srv:
            cold, _ = ttft_and_total(srv.url, "alpha", args.max_tokens)
            warm = statistics.median(ttft_and_total(srv.url, "alpha", args.max_tokens)[0] for _ in range(args.warm))
        print(f"TTFT cold (load + first token): {cold * 1000:,.0f} ms · resident (median of {args.warm}): "
              f"{warm * 1000:,.0f} ms · cold / resident {cold / warm:,.1f}x")
        results = {}
        for limit in (1, 2):
            with LiveServer(make_settings(cache_dir=work / "cache", models_dir=models, models_max=limit)) as srv:
                ttft_and_total(srv.url, "alpha", 1)  # the first load is not part of the stream
                t0 = time.perf_counter()
                ttfts = [ttft_and_total(srv.url, ("beta", "alpha")[i % 2], args.max_tokens)[0]
                         for i in range(args.requests)]
                results[limit] = (time.perf_counter() - t0, statistics.median(ttfts))
        for limit, (total, ttft) in results.items():
            print(f"--models-max {limit}: {args.requests} alternating A/B requests in {total:,.2f} s · "
                  f"median TTFT {ttft * 1000:,.0f} ms")
        print(f"alternating stream, --models-max 1 / 2: {results[1][0] / results[2][0]:,.1f}x the time, "
              f"{results[1][1] / results[2][1]:,.1f}x the median TTFT")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
