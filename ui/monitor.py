"""The Monitor section: live memory (process, GPU, model) and latency of the last requests.

A gr.Timer refreshes it once a second while the tab is open (and never otherwise); it only reads
samples the background MemoryMonitor already took, so a tick costs no measurement.
"""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from monitoring.contention import describe as describe_contention
from monitoring.model_memory import MEMORY_LEGEND
from serving.services import Services

MIB = 2**20
REQUEST_COLUMNS = ["id", "endpoint", "model", "quant", "prompt", "output", "TTFT ms", "TPOT ms", "tok/s", "s", "outcome"]


def _fmt(v, scale=1.0, digits=0):
    return None if v is None else round(v * scale, digits)


def memory_frame(samples: list[dict], footprint_mib: float | None = None) -> pd.DataFrame:
    """Process RSS and each GPU's use over time, and the models' memory beside them (every model held,
    weights + KV cache + overhead: the part of RSS / GPU memory the models account for)."""
    now = time.time()
    rows = []
    for s in samples:
        t = round(s["time"] - now, 1)
        rows.append({"seconds ago": t, "MiB": s["process"]["rss_bytes"] / MIB, "series": "process RSS"})
        if footprint_mib:
            rows.append({"seconds ago": t, "MiB": footprint_mib, "series": "model footprint"})
        for d in s["gpu"]["devices"]:
            if "used_bytes" in d:
                rows.append({"seconds ago": t, "MiB": d["used_bytes"] / MIB, "series": f"GPU {d['index']} used"})
    return pd.DataFrame(rows, columns=["seconds ago", "MiB", "series"])


def latency_frame(recent: list[dict]) -> pd.DataFrame:
    """One point per request and metric; the request number is a category ("#3"), so the axis shows
    whole request numbers only and a single request is a visible point."""
    rows = []
    for r in recent:
        if r["ttft_s"] is not None:
            rows.append({"request": f"#{r['request_id']}", "ms": r["ttft_s"] * 1000, "metric": "TTFT"})
        if r["tpot_s"] is not None:
            rows.append({"request": f"#{r['request_id']}", "ms": r["tpot_s"] * 1000, "metric": "TPOT"})
    return pd.DataFrame(rows, columns=["request", "ms", "metric"])


def requests_frame(recent: list[dict]) -> pd.DataFrame:
    rows = [[r["request_id"], r["endpoint"], r["model"], r["quantization"], r["prompt_tokens"], r["completion_tokens"],
             _fmt(r["ttft_s"], 1000), _fmt(r["tpot_s"], 1000, 1), _fmt(r["tokens_per_s"], 1, 1), _fmt(r["e2e_s"], 1, 2),
             r["outcome"]] for r in reversed(recent)]
    return pd.DataFrame(rows, columns=REQUEST_COLUMNS)


def figures_markdown(stats: dict) -> str:
    mem = stats["memory"]
    proc, system, gpu = mem["process"], mem["system"], mem["gpu"]
    lines = [f"**Process** RSS {proc['rss_bytes'] / MIB:,.0f} MiB · CPU {proc['cpu_percent']:.0f}% "
             f"(100% = one core, {system['cpu_count']} here) · system free {system['available_bytes'] / MIB:,.0f} "
             f"of {system['total_bytes'] / MIB:,.0f} MiB"]
    if gpu["available"]:
        for d in gpu["devices"]:
            if "used_bytes" in d:
                lines.append(f"**GPU {d['index']}** {d['name']}: {d['used_bytes'] / MIB:,.0f} / "
                             f"{d['total_bytes'] / MIB:,.0f} MiB · {d['utilization_percent']}% busy")
        for t in gpu["torch"]:
            lines.append(f"torch cuda:{t['index']}: allocated {t['allocated_bytes'] / MIB:,.0f} MiB · reserved "
                         f"{t['reserved_bytes'] / MIB:,.0f} MiB · peak {t['peak_allocated_bytes'] / MIB:,.0f} MiB")
    else:
        lines.append(f"**GPU** none: {gpu['reason']} (CPU figures only)")
    m = stats["model"]
    if not m:
        lines.append("**Model** none loaded")
    account = stats.get("memory_account")
    if account:
        lines.append(models_table(account))
    q = stats["requests"]
    q = stats["requests"]
    p50 = (f" · p50 TTFT {q['ttft_p50_s'] * 1000:.0f} ms" if q["ttft_p50_s"] is not None else "") + \
          (f" · p50 {q['tokens_per_s_p50']:.1f} tok/s" if q["tokens_per_s_p50"] else "")
    lines.append(f"**Requests** {q['running']} running · {q['waiting']} waiting · {q['total']} done{p50}")
    if m and m.get("n_threads"):
        now = (f" · {m['n_threads_now']} now (other processes used {m['cpu_others_cores']:.1f} cores)"
               if m.get("cpu_others_cores") is not None else "")
        lines.append(f"**Threads** {m['n_threads']} ({m.get('threads_why') or m.get('threads_mode', '')}){now}")
    contended = contention_line(stats["recent"])
    if contended:
        lines.append(contended)
    return "\n\n".join(lines)


ROLES = {"chat": "chat", "pool": "by name", "lab": "lab", "finishing": "finishing replies"}


def models_table(account: dict) -> str:
    """The memory account as the Monitor shows it: a row per model in memory (the chat's, the pool's,
    the lab's variants, replaced ones finishing), each by the one definition, then their sum and what
    the process holds beyond them: the rows and that line add up to RSS."""
    lines = ["| model in memory | role | quantization | device | MiB | weights + KV + overhead |",
             "|---|---|---|---|--:|---|"]
    for row in account["models"]:
        mem = row["memory"]
        parts = (f"{mem['weights_mib']:,.1f} + {mem['kv_mib']:,.1f} ({mem['n_ctx']} ctx x {mem['slots']}) + "
                 f"{mem['overhead_mib']:,.1f}" if mem["total_bytes"] else "not visible (remote engine)")
        lines.append(f"| {row['name']} | {ROLES.get(row['role'], row['role'])} | {row['quantization']} | "
                     f"{row['device']} | {row['memory_mib']:,.1f} | {parts} |")
    if not account["models"]:
        lines.append("| (none) | | | | 0.0 | |")
    text = "\n".join(lines)
    if account["process_other_mib"] is not None:
        text += (f"\n\n**Models together** {account['models_mib']:,.1f} MiB + **prompt cache** "
                 f"{account['prompt_cache_mib']:,.1f} MiB + **the process beyond them** "
                 f"{account['process_other_mib']:,.1f} MiB (Python, Gradio, other caches) = **RSS** "
                 f"{account['rss_mib']:,.1f} MiB")
    if account.get("gpu_used_mib") is not None:
        text += f" · GPU memory in use {account['gpu_used_mib']:,.1f} MiB (a model on a GPU is counted there)"
    return text + f"  \n<small>{MEMORY_LEGEND}</small>"


def contention_line(recent: list[dict]) -> str:
    """The last finished reply's verdict: '' unless it decoded far below its model's quiet speed."""
    done = [r for r in recent if r["outcome"] == "ok" and r.get("tokens_per_s")]
    if not done or not done[-1].get("cpu_contended"):
        return ""
    r = done[-1]
    return f"**⚠ {describe_contention(r['cpu_contended'])}** (request #{r['request_id']}, {r['model']})"


def build_monitor(h: Services):
    """Returns the timer so the app can switch it on only while this tab is open."""
    figures = gr.Markdown(elem_id="monitor-figures")
    with gr.Row():
        mem_plot = gr.LinePlot(x="seconds ago", y="MiB", color="series", title="Memory", height=280,
                               elem_id="memory-plot")
        lat_plot = gr.ScatterPlot(x="request", y="ms", color="metric", title="Latency per request", height=280,
                                  elem_id="latency-plot", x_label_angle=0)
    table = gr.Dataframe(headers=REQUEST_COLUMNS, label="Last requests", interactive=False, max_height=300)
    timer = gr.Timer(1.0, active=False)

    def refresh():
        stats = h.stats(last=50)
        samples = list(h.monitor.samples)[-300:] if h.monitor else []
        account = stats.get("memory_account")
        models_mib = account["models_mib"] if account and account["models"] else None  # every model held, one account
        latency = latency_frame(stats["recent"])
        order = list(dict.fromkeys(latency["request"]))  # request order, not alphabetical ("#10" after "#9")
        return (figures_markdown(stats), memory_frame(samples, models_mib),
                gr.ScatterPlot(value=latency, sort=order or None), requests_frame(stats["recent"]))

    outputs = [figures, mem_plot, lat_plot, table]
    timer.tick(refresh, None, outputs, concurrency_limit=None, api_visibility="private", show_progress="hidden",
               trigger_mode="once")
    return timer, refresh, outputs
