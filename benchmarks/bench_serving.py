"""Serving overhead benchmark: the raw engine vs the app (Gradio /chat and OpenAI /v1), in ONE run.

    python -m benchmarks.bench_serving                      # llama.cpp, 5 requests/path, 128 tokens, 1,4,8 clients
    python -m benchmarks.bench_serving --short              # CI smoke: 2 requests, 32 tokens, 1,2 clients
    python -m benchmarks.bench_serving --full               # adds 16 concurrent clients
    python -m benchmarks.bench_serving --backend transformers
    python -m benchmarks.bench_serving --llama-server ~/.cache/quantlab-tools/bin/llama-server

Same model, same prompts, greedy decoding on every path. Phases run one after the other (never two
at once, so they do not share the CPU): RAW engine in-process -> the real app (create_app + uvicorn
in a thread, app.LiveServer as the tests run it; or `python app.py`) with the same model -> Gradio /chat through
gradio_client -> the same over Gradio's REST SSE -> /v1/chat/completions through the openai client ->
a /v1 concurrency sweep. With --llama-server, llama.cpp's own server runs beside the app with the
same GGUF, threads and slots, and takes its turn after the app on every /v1 request and sweep level.

Definitions (vLLM's benchmark_serving): TTFT = request sent -> first non-empty text seen by the
client; TPOT = (latency - TTFT) / (output tokens - 1); decode tok/s = (output tokens - 1) /
(latency - TTFT) = 1 / TPOT. Output tokens are the server's count (stats / usage), never a count of
chunks, except on the raw path (one chunk per token, see README). Its parts in benchmarks.common:
workload (prompts, Sample), raw_engines, harness (the servers, memory), clients, report.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")

from benchmarks.common import clients, harness, report
from benchmarks.common.raw_engines import open_raw_engine
from benchmarks.common.workload import PROMPTS, WARMUP_PROMPT, log, schedule


def run_raw(args, order: list[int], rss: harness.RssTracker):
    engine, info = open_raw_engine(args)
    rss.mark("raw_loaded")
    try:
        engine.run(-1, WARMUP_PROMPT, args.max_tokens)
        samples = []
        for i, idx in enumerate(order):
            s = engine.run(idx, PROMPTS[idx], args.max_tokens)
            log(f"RAW {i + 1}/{len(order)}: {s.tokens} tok, TTFT {s.ttft_s * 1000:.1f} ms, {s.tok_s or 0:.1f} tok/s")
            samples.append(s)
        rss.mark("raw_done")
    finally:
        engine.close()
        del engine
        gc.collect()
    return samples, info


def on_own_thread(fn, *args):
    """``fn(*args)`` on a thread that ends with it. libgomp keeps an OpenMP team per calling thread for
    that thread's life: a raw engine decoded on this (main) thread would leave its team behind, and with
    the app's compute thread's team the process would hold more OpenMP threads than CPUs, which
    throttles every later decode (the app measured 0.28x of raw that way; backends/llamacpp/compute.py)."""
    out: list = []

    def target():
        try:
            out.append((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller
            out.append((False, exc))

    t = threading.Thread(target=target, name="raw-engine")
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def measure(order: list[int], paths: dict, on_warm=None) -> dict:
    """``paths``: {key: (label, request(prompt_index, prompt) -> Sample)}. One warm-up each, then every
    prompt in order, the paths taking turns on each prompt (one request at a time)."""
    for _, request in paths.values():
        request(-1, WARMUP_PROMPT)
    if on_warm:
        on_warm()
    out = {key: [] for key in paths}
    for i, idx in enumerate(order):
        for key, (label, request) in paths.items():
            s = request(idx, PROMPTS[idx])
            log(f"{label} {i + 1}/{len(order)}: {s.tokens} tok, TTFT {s.ttft_s * 1000:.1f} ms, {s.tok_s or 0:.1f} tok/s")
            out[key].append(s)
    return out


def sweep(args, targets: dict) -> dict:
    """``targets``: {key: (label, url, model)}; at each level every target in turn."""
    out = {key: [] for key in targets}
    for n in args.concurrency_levels:
        total = max(args.requests, n)
        for key, (label, url, model) in targets.items():
            log(f"SWEEP{label}: {n} concurrent /v1 clients, {total} requests")
            level = clients.concurrency_level(url, model, n, total, args.max_tokens)
            log(f"SWEEP{label} {n}: {level['aggregate_tok_s'] or 0:.1f} tok/s aggregate, TTFT p50 "
                f"{level['ttft_ms_p50'] or 0:.0f} ms, {len(level['errors'])} errors")
            out[key].append(level)
    return out


def llama_server_for(args) -> harness.LlamaServer:
    from backends.files.sources import embedded_model_path

    model = Path(args.model) if args.model else embedded_model_path()
    return harness.LlamaServer(args.llama_server, model, args.n_ctx, args.threads, args.parallel, args.prompt_cache_mib)


def run_app(args, order: list[int], rss: harness.RssTracker) -> dict:
    from gradio_client import Client

    out: dict = {}
    if args.app_mode == "inprocess":
        log("APP: starting create_app() under uvicorn in a thread of this process")
        server = harness.InProcessApp(args.n_ctx, args.threads if args.backend == "llamacpp" else None,
                                      args.prompt_cache_mib)
    else:
        server = harness.AppSubprocess(args)
        log(f"APP: starting {' '.join(server.cmd[1:])}")
    with server as srv:
        out["model"] = info = srv.load(harness.app_spec(args))
        log(f"APP: loaded {info['name']} ({info['backend']}, {info['quantization']}) at {srv.url}")
        app_rss = rss
        if args.app_mode == "subprocess":  # the app's memory is the server process's
            app_rss = harness.RssTracker(srv.pid, snapshots=rss.snapshots).start()
        out["app_rss"] = app_rss
        app_rss.mark("app_loaded")

        client = Client(srv.url, verbose=False)
        try:
            out.update(measure(order, {"app_gradio": (
                "APP /chat", lambda i, p: clients.gradio_request(client, i, p, args.max_tokens))}))
        finally:
            client.close()

        import httpx

        with httpx.Client(base_url=srv.url, timeout=600) as http:
            out.update(measure(order, {"app_rest": (
                "APP /chat REST", lambda i, p: clients.rest_request(http, i, p, args.max_tokens))}))

        with contextlib.ExitStack() as stack:
            ls = None
            if args.llama_server:
                ls = stack.enter_context(llama_server_for(args))
                log(f"LLAMA-SERVER: starting {' '.join(ls.cmd)}")
                ls.wait_ready()
            targets = {"concurrency": ("", srv.url, "default")}
            if ls:
                targets["llama_server_concurrency"] = (" llama-server", ls.url, ls.model_name)
            with contextlib.ExitStack() as oais:  # single streams, closed before the sweep
                oai = oais.enter_context(clients.openai_client(srv.url))
                v1 = {"app_v1": ("APP /v1", lambda i, p: clients.v1_request(oai, "default", i, p, args.max_tokens))}
                if ls:
                    ls_oai = oais.enter_context(clients.openai_client(ls.url))
                    v1[report.LLAMA_SERVER] = ("LLAMA-SERVER /v1", lambda i, p: clients.v1_request(
                        ls_oai, ls.model_name, i, p, args.max_tokens))
                out.update(measure(order, v1, on_warm=lambda: app_rss.mark("app_warm")))
            out.update(sweep(args, targets))
            if ls:
                out["llama_server_info"] = {"binary": str(ls.binary), "cmd": ls.cmd, "version": ls.version()}
        app_rss.mark("app_done")
        if app_rss is not rss:
            app_rss.stop()
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("llamacpp", "transformers"), default="llamacpp")
    ap.add_argument("--model", default=None,
                    help="llamacpp: a GGUF file; transformers: a checkpoint folder (default: the embedded SmolLM2 model)")
    ap.add_argument("--requests", type=int, default=None, help="measured requests per path (default 5; --short: 2)")
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per reply (default 128; --short: 32)")
    ap.add_argument("--concurrency", default=None, help="comma-separated client counts (default 1,4,8; --full adds 16; --short: 1,2)")
    ap.add_argument("--short", action="store_true", help="CI smoke mode: 2 requests, 32 tokens, concurrency 1,2")
    ap.add_argument("--full", action="store_true", help="add 16 clients to the default sweep")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads, raw and app alike (default: physical cores, as the app)")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--prompt-cache-mib", type=int, default=0,
                    help="the app's host-memory prompt cache and llama-server's --cache-ram (default 0: off for both; the "
                         "app's earlier phases send every prompt first, so with it on /v1 would restore prompts "
                         "llama-server and the raw engine meet cold)")
    ap.add_argument("--parallel", type=int, default=4, help="batch slots in the app, either backend (the app's default: 4)")
    ap.add_argument("--app-mode", choices=("inprocess", "subprocess"), default="inprocess",
                    help="inprocess: create_app() under uvicorn in a thread here (default); subprocess: "
                         "`python app.py` in its own process, so the clients share no GIL with the server")
    ap.add_argument("--dtype", choices=("bf16", "fp32", "fp16"), default="bf16", help="transformers: weights dtype (raw and app)")
    ap.add_argument("--llama-server", default=None, metavar="PATH",
                    help="llama.cpp's llama-server binary (benchmarks/build_llama_tools.sh builds it): measured beside "
                         "the app's /v1 with the same GGUF, --threads and --parallel slots (llamacpp only)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving.json"),
                    help="JSON results; the PNG plot goes beside it with the same stem")
    args = ap.parse_args(argv)
    args.requests = args.requests if args.requests is not None else (2 if args.short else 5)
    args.max_tokens = args.max_tokens if args.max_tokens is not None else (32 if args.short else 128)
    if args.concurrency is None:
        args.concurrency = "1,2" if args.short else ("1,4,8,16" if args.full else "1,4,8")
    try:
        levels = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if not levels or levels[0] < 1:
        ap.error("--concurrency needs client counts >= 1")
    if args.requests < 1 or args.max_tokens < 2:
        ap.error("--requests must be >= 1 and --max-tokens >= 2 (TPOT needs two tokens)")
    if args.llama_server:
        if args.backend != "llamacpp":
            ap.error("--llama-server compares with the llama.cpp backend only (the same GGUF)")
        args.llama_server = str(Path(args.llama_server).expanduser())
        if not os.access(args.llama_server, os.X_OK):
            ap.error(f"--llama-server {args.llama_server} is not an executable file "
                     "(benchmarks/build_llama_tools.sh builds one)")
    args.concurrency_levels = levels
    if args.threads is None:
        from backends.threads import physical_cores

        args.threads = physical_cores()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    started = time.time()
    rss = harness.RssTracker().start()
    rss.mark("start")
    order = schedule(args.requests)
    try:
        raw_samples, raw_info = on_own_thread(run_raw, args, order, rss)  # closed before the app starts
        rss.mark("raw_closed")
        app = run_app(args, order, rss)
        rss.mark("end")
    finally:
        rss.stop()
    res = report.build_results(args, raw_samples, raw_info, app, rss, started)
    report.plot(res, png)
    res["plot"], res["out"] = str(png), str(out)
    out.write_text(json.dumps(res, indent=2, default=report.json_default))
    print(report.render(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
