"""Results of one run: per-path summaries, the ratios between paths, the JSON, the PNG and the table.

A path's decode tok/s and TTFT are medians over its requests (robust to a burst of outside load on a
shared machine; the pooled figure is in the JSON too). Ratios and differences are between paths
measured in the same run only; nothing here judges an absolute time.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from benchmarks.common.workload import PROMPTS, SYSTEM_PROMPT, Sample
from monitoring.stats import percentile

# The issue's goals, and what the plain alternatives reached on the 2-core CPU machines (a plain
# Gradio app streaming llama-cpp-python; llama-cpp-python's own OpenAI server), for the table.
# Issue 16: Gradio REST /chat within 20 ms of raw TTFT and >= 0.97 of its decode; the first goals (0.95,
# 50 ms) for the other paths. /v1 against llama-server: >= 0.97 decode and aggregate, TTFT within 5 ms.
# No scaling goal for llama.cpp: llama-batched-bench shows the engine itself gains ~1.6x from batch 8 on
# these CPUs (the old 2.5x was beyond it); llama-server's own scaling is the yardstick.
GOAL_TOK_S_RATIO = {"app_gradio": 0.95, "app_rest": 0.97, "app_v1": 0.95}
GOAL_TTFT_ADDED_MS = {"app_gradio": 50.0, "app_rest": 20.0, "app_v1": 50.0}
GOAL_SCALING = {"llamacpp": {}, "transformers": {8: 4.0}}  # aggregate tok/s at N clients / at 1 client
GOAL_VS_LLAMA_SERVER = 0.97
GOAL_TTFT_VS_LLAMA_SERVER_MS = 5.0
REFERENCE = {
    "app_gradio": "plain Gradio app: 0.87, +110 ms",
    "app_rest": "llama-server's own /v1: 0.93-0.99 of raw (2026-11-25)",
    "app_v1": "llama-cpp-python server: 0.87, +7 ms",
}

PATHS = ("raw", "app_gradio", "app_rest", "app_v1")
APP_PATHS = PATHS[1:]
LLAMA_SERVER = "llama_server"
PATH_LABELS = {"raw": "raw engine", "app_gradio": "app /chat (gradio_client)", "app_rest": "app /chat (REST SSE)",
               "app_v1": "app /v1 (openai SSE)", LLAMA_SERVER: "llama-server /v1 (openai)"}


def _pct(values, q: float) -> float | None:
    return percentile([v for v in values if v is not None], q)


def summarize(samples: list[Sample]) -> dict:
    usable = [s for s in samples if s.tokens > 1 and s.decode_s > 0]
    pooled = (sum(s.tokens - 1 for s in usable) / sum(s.decode_s for s in usable)) if usable else None
    ttfts = [s.ttft_s * 1000 for s in samples]
    return {
        "requests": len(samples),
        "tokens_total": sum(s.tokens for s in samples),
        "tokens_mean": statistics.fmean(s.tokens for s in samples) if samples else 0,
        "decode_tok_s": _pct([s.tok_s for s in usable], 50),  # median over requests: the one the ratios use
        "decode_tok_s_pooled": pooled,
        "decode_tok_s_per_request": [s.tok_s for s in samples],
        # single-stream output throughput including TTFT: sum(tokens) / sum(latency)
        "output_tok_s": (sum(s.tokens for s in samples) / sum(s.latency_s for s in samples)) if samples else None,
        "ttft_ms_p50": _pct(ttfts, 50),
        "ttft_ms_mean": statistics.fmean(ttfts) if ttfts else None,
        "ttft_ms_min": min(ttfts) if ttfts else None,
        "tpot_ms_p50": _pct([s.tpot_s * 1000 for s in samples if s.tpot_s is not None], 50),
        "latency_s_mean": statistics.fmean(s.latency_s for s in samples) if samples else None,
        "server_ttft_ms_p50": _pct([s.server["ttft_s"] * 1000 for s in samples
                                    if s.server and s.server.get("ttft_s") is not None], 50),
        "samples": [s.as_dict() for s in samples],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _add_scaling(levels: list[dict]) -> dict:
    base = next((lv for lv in levels if lv["clients"] == 1), levels[0] if levels else None)
    for lv in levels:
        lv["scaling_vs_1"] = ratio(lv["aggregate_tok_s"], base["aggregate_tok_s"] if base else None)
    return {str(lv["clients"]): lv["scaling_vs_1"] for lv in levels}


def _meets(value: float | None, goal: float, higher: bool) -> bool | None:
    if value is None:
        return None
    return value >= goal if higher else value <= goal


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def build_results(args, raw_samples, raw_info, app, rss, started: float) -> dict:
    """``app``: what bench_serving.run_app measured; ``rss``: this process's RssTracker."""
    paths = {"raw": summarize(raw_samples), **{k: summarize(app[k]) for k in APP_PATHS}}
    paths["raw"].update(raw_info)
    compared = list(APP_PATHS)
    if LLAMA_SERVER in app:
        paths[LLAMA_SERVER] = summarize(app[LLAMA_SERVER])
        paths[LLAMA_SERVER]["engine"] = "llama-server /v1/chat/completions (openai client, stream=True)"
        compared.append(LLAMA_SERVER)
    raw_text = {s.prompt_index: s.text for s in raw_samples}
    for key in compared:  # greedy on the same prompt: the same reply is expected
        paths[key]["same_text_as_raw"] = sum(1 for s in app[key] if raw_text.get(s.prompt_index) == s.text)
    raw = paths["raw"]
    ratios = {f"{k}_tok_s_vs_raw": ratio(paths[k]["decode_tok_s"], raw["decode_tok_s"]) for k in APP_PATHS}
    ttft_added = {f"{k}_ms": paths[k]["ttft_ms_p50"] - raw["ttft_ms_p50"] for k in APP_PATHS}
    levels = app["concurrency"]
    scaling = _add_scaling(levels)
    goals = {
        "tok_s_ratio_min": GOAL_TOK_S_RATIO,
        "ttft_added_ms_max": GOAL_TTFT_ADDED_MS,
        "scaling_min": {str(k): v for k, v in GOAL_SCALING[args.backend].items()},
    }
    verdict = {}
    for k in APP_PATHS:
        verdict[f"{k}_tok_s"] = _meets(ratios[f"{k}_tok_s_vs_raw"], GOAL_TOK_S_RATIO[k], higher=True)
        verdict[f"{k}_ttft"] = _meets(ttft_added[f"{k}_ms"], GOAL_TTFT_ADDED_MS[k], higher=False)
    for n, goal in goals["scaling_min"].items():
        if n in scaling:
            verdict[f"scaling_{n}"] = _meets(scaling[n], goal, higher=True)
    snaps = rss.snapshots
    app_rss = app["app_rss"]
    mem = {
        # app_* snapshots are the process that runs the app: this one, or the server subprocess
        "app_process": "this process" if app_rss is rss else f"server subprocess (pid {app_rss.pid})",
        "rss_mib": {k: round(v / 2**20, 1) for k, v in snaps.items()},
        "peak_mib": round(rss.peak / 2**20, 1),
        "app_peak_mib": round(app_rss.peak / 2**20, 1),
        "growth_run_mib": round((snaps["end"] - snaps["start"]) / 2**20, 1),
        # After the app is loaded and warm: what serving requests added (a leak shows here).
        "growth_serving_mib": round((snaps["app_done"] - snaps["app_warm"]) / 2**20, 1),
    }
    res = {
        "meta": {
            "backend": args.backend, "app_mode": args.app_mode, "model": app["model"], "n_ctx": args.n_ctx,
            "n_threads": args.threads if args.backend == "llamacpp" else _torch_threads(),
            "dtype": args.dtype if args.backend == "transformers" else None,
            "requests_per_path": args.requests, "max_tokens": args.max_tokens, "concurrency": args.concurrency_levels,
            "short": args.short, "prompts": list(PROMPTS), "system_prompt": SYSTEM_PROMPT, "decoding": "greedy",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "duration_s": time.time() - started, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "llama_cpp_python": _version("llama_cpp_python"),  # read from the metadata: llama_cpp is not imported
            "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "definitions": {"ttft": "client-side: request sent -> first non-empty text",
                            "decode_tok_s": "median over the path's requests of (tokens - 1) / (latency - ttft)",
                            "decode_tok_s_pooled": "sum(tokens - 1) / sum(latency - ttft) over the path's requests",
                            "tpot": "(latency - ttft) / (tokens - 1)",
                            "aggregate_tok_s": "all output tokens at that level / wall time of the level"},
        },
        "paths": paths,
        "concurrency": levels,
        "ratios": ratios,
        "scaling": scaling,
        "ttft_added_ms": ttft_added,
        "goals": goals,
        "meets_goals": verdict,
        "rss": mem,
    }
    if LLAMA_SERVER in app:
        res.update(_vs_llama_server(paths, levels, app))
    return res


def _vs_llama_server(paths: dict, levels: list[dict], app: dict) -> dict:
    ls, v1 = paths[LLAMA_SERVER], paths["app_v1"]
    ls_levels = app["llama_server_concurrency"]
    ls_scaling = _add_scaling(ls_levels)
    by_n = {lv["clients"]: lv for lv in ls_levels}
    return {
        "llama_server": {**app["llama_server_info"], "concurrency": ls_levels, "scaling": ls_scaling},
        "vs_llama_server": {
            "app_v1_tok_s_vs_llama_server": ratio(v1["decode_tok_s"], ls["decode_tok_s"]),
            "app_v1_ttft_added_ms_vs_llama_server": _diff(v1["ttft_ms_p50"], ls["ttft_ms_p50"]),
            "llama_server_tok_s_vs_raw": ratio(ls["decode_tok_s"], paths["raw"]["decode_tok_s"]),
            # app /v1 aggregate tok/s / llama-server's at the same number of clients
            "aggregate_tok_s": {str(lv["clients"]): ratio(lv["aggregate_tok_s"], by_n[lv["clients"]]["aggregate_tok_s"])
                                for lv in levels if lv["clients"] in by_n},
        },
    }


def _f(v, fmt: str, none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def _ok(v: bool | None) -> str:
    return {True: "ok", False: "MISS", None: "?"}[v]


def render(res: dict) -> str:
    m, p = res["meta"], res["paths"]
    lines = [
        "",
        f"QuantLab serving benchmark · {m['backend']} · {m['model']['name']} ({m['model']['quantization']}) · greedy",
        f"{len(m['prompts'])} prompts · {m['requests_per_path']} requests/path (+1 warm-up) · max {m['max_tokens']} tokens"
        f" · app {m['app_mode']} · n_threads={m['n_threads']} · load avg {_f(m['load_avg_1m'], '.2f')} · {m['duration_s']:.0f} s",
        "",
        f"{'path':<28}{'reqs':>5}{'tok/req':>9}{'TTFT p50':>10}{'TTFT mean':>11}{'TPOT p50':>10}"
        f"{'decode tok/s':>14}{'server TTFT':>13}{'same text':>11}",
    ]
    for key in (*PATHS, LLAMA_SERVER):
        if key not in p:
            continue
        s = p[key]
        same = "-" if key == "raw" else f"{s['same_text_as_raw']}/{s['requests']}"
        lines.append(f"{PATH_LABELS[key]:<28}{s['requests']:>5}{s['tokens_mean']:>9.1f}{_f(s['ttft_ms_p50'], '.1f'):>8} ms"
                     f"{_f(s['ttft_ms_mean'], '.1f'):>8} ms{_f(s['tpot_ms_p50'], '.2f'):>7} ms"
                     f"{_f(s['decode_tok_s'], '.1f'):>14}{_f(s['server_ttft_ms_p50'], '.1f'):>10} ms{same:>11}")
    r, t, v, g = res["ratios"], res["ttft_added_ms"], res["meets_goals"], res["goals"]
    ref = REFERENCE if m["backend"] == "llamacpp" else dict.fromkeys(APP_PATHS, "")  # llama.cpp figures only
    short = {"app_gradio": "/chat gradio_client", "app_rest": "/chat REST", "app_v1": "/v1"}
    lines += [
        "(client-side; decode tok/s = median over requests of (tokens - 1) / (latency - TTFT); "
        "server TTFT = the app's own measurement)",
        "",
        f"{'ratio (same run)':<36}{'measured':>10}{'goal':>10}{'':>6}  to beat (other servers, these machines)",
    ]
    for k in APP_PATHS:
        lines.append(f"{'app ' + short[k] + ' tok/s / raw':<36}{_f(r[k + '_tok_s_vs_raw'], '.3f'):>10}"
                     f"{'>= ' + str(GOAL_TOK_S_RATIO[k]):>10}{_ok(v[k + '_tok_s']):>6}  {ref.get(k, '')}")
    for k in APP_PATHS:
        lines.append(f"{'app ' + short[k] + ' TTFT added (p50, ms)':<36}{_f(t[k + '_ms'], '+.1f'):>10}"
                     f"{'<= ' + str(int(GOAL_TTFT_ADDED_MS[k])):>10}{_ok(v[k + '_ttft']):>6}")
    for n, sc in res["scaling"].items():
        if n == "1":
            continue
        goal = g["scaling_min"].get(n)
        lines.append(f"{'/v1 scaling, ' + n + ' clients vs 1':<36}{_f(sc, '.2f') + 'x':>10}"
                     f"{('>= ' + str(goal) + 'x') if goal else '-':>10}{_ok(v.get('scaling_' + n)) if goal else '':>6}")
    lines += [
        "",
        "/v1 concurrency sweep (streaming clients; TPOT = (latency - TTFT)/(tokens - 1))",
        f"{'clients':>7}{'reqs':>6}{'errors':>7}{'agg tok/s':>11}{'scaling':>9}{'TTFT p50':>11}{'TTFT p99':>11}"
        f"{'TPOT p50':>11}{'TPOT p99':>11}",
    ]
    for lv in res["concurrency"]:
        lines.append(f"{lv['clients']:>7}{lv['requests']:>6}{len(lv['errors']):>7}{_f(lv['aggregate_tok_s'], '.1f'):>11}"
                     f"{_f(lv['scaling_vs_1'], '.2f') + 'x':>9}{_f(lv['ttft_ms_p50'], '.0f'):>8} ms"
                     f"{_f(lv['ttft_ms_p99'], '.0f'):>8} ms{_f(lv['tpot_ms_p50'], '.1f'):>8} ms"
                     f"{_f(lv['tpot_ms_p99'], '.1f'):>8} ms")
    if "vs_llama_server" in res:
        lines += render_vs_llama_server(res)
    if m["backend"] == "llamacpp" and m["n_threads"] >= (m["cpu_count"] or 0):
        who = "SSE, the clients in this process" if m["app_mode"] == "inprocess" else "SSE; the client process"
        lines += ["", f"note: n_threads={m['n_threads']} = all {m['cpu_count']} CPUs: the app's own work (event loop, "
                      f"{who}) competes with llama.cpp's threads; compare with --threads "
                      f"{max(1, (m['cpu_count'] or 2) - 1)}" + (" and --app-mode subprocess." if m["app_mode"] == "inprocess" else ".")]
    mem = res["rss"]
    mib = mem["rss_mib"]
    if mem["app_process"] == "this process":
        lines += ["", "RSS (MiB): " + " -> ".join(f"{k} {v:.0f}" for k, v in mib.items())
                  + f"; peak {mem['peak_mib']:.0f}"]
    else:
        lines += ["", "RSS (MiB), this process: " + " -> ".join(f"{k} {v:.0f}" for k, v in mib.items()
                                                             if not k.startswith("app_"))
                  + f"; peak {mem['peak_mib']:.0f}",
                  f"RSS (MiB), {mem['app_process']}: " + " -> ".join(f"{k} {v:.0f}" for k, v in mib.items()
                                                                   if k.startswith("app_"))
                  + f"; peak {mem['app_peak_mib']:.0f}"]
    lines.append(f"RSS growth: over the run (this process) {mem['growth_run_mib']:+.1f} MiB; while serving "
                 f"(warm app -> end of sweep) {mem['growth_serving_mib']:+.1f} MiB")
    if "plot" in res:
        lines.append(f"results: {res['out']} · plot: {res['plot']}")
    return "\n".join(lines)


def render_vs_llama_server(res: dict) -> list[str]:
    vs, ls = res["vs_llama_server"], res["llama_server"]
    by_n = {lv["clients"]: lv for lv in ls["concurrency"]}
    lines = [
        "",
        f"app vs llama-server (same GGUF, threads and -np; measured alternately) · {ls.get('version') or ls['binary']}",
        f"{'app /v1 decode tok/s / llama-server':<44}{_f(vs['app_v1_tok_s_vs_llama_server'], '.3f'):>10}"
        f"   goal >= {GOAL_VS_LLAMA_SERVER}{_ok(_meets(vs['app_v1_tok_s_vs_llama_server'], GOAL_VS_LLAMA_SERVER, True)):>6}",
        f"{'app /v1 TTFT - llama-server TTFT (p50, ms)':<44}{_f(vs['app_v1_ttft_added_ms_vs_llama_server'], '+.1f'):>10}"
        f"   goal <= +{GOAL_TTFT_VS_LLAMA_SERVER_MS:.0f}"
        f"{_ok(_meets(vs['app_v1_ttft_added_ms_vs_llama_server'], GOAL_TTFT_VS_LLAMA_SERVER_MS, False)):>7}",
        f"{'llama-server decode tok/s / raw':<44}{_f(vs['llama_server_tok_s_vs_raw'], '.3f'):>10}",
        f"app aggregate / llama-server's: goal >= {GOAL_VS_LLAMA_SERVER} at every level",
        f"{'clients':>7}{'app agg tok/s':>15}{'llama-server':>14}{'app / llama-server':>20}{'llama-server scaling':>22}"
        f"{'its TTFT p50':>14}",
    ]
    for lv in res["concurrency"]:
        other = by_n.get(lv["clients"])
        if other is None:
            continue
        lines.append(f"{lv['clients']:>7}{_f(lv['aggregate_tok_s'], '.1f'):>15}{_f(other['aggregate_tok_s'], '.1f'):>14}"
                     f"{_f(vs['aggregate_tok_s'].get(str(lv['clients'])), '.3f'):>20}"
                     f"{_f(other['scaling_vs_1'], '.2f') + 'x':>22}{_f(other['ttft_ms_p50'], '.0f'):>11} ms")
    return lines


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = res["concurrency"]
    xs = [lv["clients"] for lv in levels]
    ls_levels = res.get("llama_server", {}).get("concurrency", [])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(xs, [lv["aggregate_tok_s"] or 0 for lv in levels], "o-", label="app /v1 aggregate")
    if ls_levels:
        ax1.plot([lv["clients"] for lv in ls_levels], [lv["aggregate_tok_s"] or 0 for lv in ls_levels], "^-",
                 label="llama-server aggregate")
    raw = res["paths"]["raw"]["output_tok_s"]
    if raw:
        ax1.axhline(raw, color="grey", ls=":", label="raw engine, 1 stream (tokens / latency)")
    base = levels[0]["aggregate_tok_s"] if levels else None
    if base and len(xs) > 1:
        ax1.plot(xs, [base * x / xs[0] for x in xs], "--", color="lightgrey", label="linear scaling")
    for n, goal in res["goals"]["scaling_min"].items():
        if base and int(n) in xs:
            ax1.plot([int(n)], [base * goal], "r*", ms=10, label=f"goal {goal}x at {n}")
    ax1.set(xlabel="concurrent streaming clients", ylabel="output tokens/s", title="Throughput vs concurrency")
    ax1.set_xticks(xs)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(xs, [lv["ttft_ms_p50"] or 0 for lv in levels], "o-", label="app /v1 TTFT p50")
    ax2.plot(xs, [lv["ttft_ms_p99"] or 0 for lv in levels], "s--", alpha=0.6, label="app /v1 TTFT p99")
    if ls_levels:
        ax2.plot([lv["clients"] for lv in ls_levels], [lv["ttft_ms_p50"] or 0 for lv in ls_levels], "^-",
                 label="llama-server TTFT p50")
    ax2.set(xlabel="concurrent streaming clients", ylabel="ms", title="Time to first token vs concurrency")
    ax2.set_xticks(xs)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    m = res["meta"]
    fig.suptitle(f"QuantLab /v1 · {m['backend']} · {m['model']['name']} · max {m['max_tokens']} tokens", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)
