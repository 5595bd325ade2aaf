"""The Compare and Evaluate sections of the quantization lab."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from monitoring.model_memory import MEMORY_LEGEND
from optimization.imatrix import gain_markdown
from optimization.lab import DEFAULT_REFERENCE, MAX_COMPARE, variant_menu
from optimization.quality import SCORINGS
from ui import attachments
from ui.edge import cancellable, gradio_errors
from ui.lab_divergence import build_divergence
from serving.services import Services

# Evaluate's table: (column shown, row field, decimals); the units are in the names.
EVAL_COLUMNS = [("variant", "shown_variant", None), ("bpw", "bpw", 2),
                ("KLD mean", "kld_mean", 4), ("KLD p99", "kld_p99", 3), ("top-1 agree %", "top1_pct", 1),
                ("PPL", "ppl", 2), ("memory MiB", "footprint_mib", 1), ("KV MiB", "kv_mib", 1),
                ("decode tok/s", "decode_tokens_per_s", 1), ("tokens scored", "tokens", None)]
TABLE_COLUMNS = [c for c, _, _ in EVAL_COLUMNS]
KV_INFO = ("llama.cpp variants take a KV cache type: add +kv:q8_0 or +kv:q4_0 (e.g. llamacpp:Q4_K_M+kv:q8_0), and "
           "an importance matrix: llamacpp:Q4_K_M+imatrix (Imatrix tab).")


def table_rows(rows: list[dict]) -> pd.DataFrame:
    """Evaluate's rows as the table shows them: human names with units, sensible decimals, the
    reference first and marked (provenance goes beside the table: ``provenance_markdown``)."""
    out = []
    for r in rows:
        r = dict(r, top1_pct=r["top1_agreement"] * 100, kv_mib=(r.get("memory") or {}).get("kv_mib"),
                 shown_variant=r["variant"] + (" (reference)" if r["is_reference"] else ""))
        out.append([round(r[f], d) if d is not None and r.get(f) is not None else r.get(f) for _, f, d in EVAL_COLUMNS])
    return pd.DataFrame(out, columns=TABLE_COLUMNS)


def _kv_type(mem: dict) -> str:
    """ " q8_0" for a quantized KV cache, "" for the default f16."""
    kv = mem.get("kv_type") or "f16"
    return "" if kv == "f16" else f" {kv}"


def provenance_markdown(rows: list[dict]) -> str:
    """One line per variant: what it holds (tensor types, bpw), where it came from, any warning."""
    lines = []
    for r in rows:
        what = " · ".join(x for x in (r.get("tensors"), r.get("note")) if x)
        warn = f"  \n&nbsp;&nbsp;⚠ {r['warning']}" if r.get("warning") else ""
        lines.append(f"- **{r['variant']}**{' (reference)' if r['is_reference'] else ''}: {what}{warn}")
    return "**Provenance**\n\n" + "\n".join(lines)


def frontier(rows: list[dict]) -> list[dict]:
    """The quality-vs-memory frontier: the variants no other variant beats on both memory and KLD
    (less or equal memory and lower KLD), by memory."""
    pts = sorted(rows, key=lambda r: (r["footprint_mib"], r["kld_mean"]))
    best, out = float("inf"), []
    for r in pts:
        if r["kld_mean"] < best:
            out.append(r)
            best = r["kld_mean"]
    return out


def quality_plot(rows: list[dict]):
    """KLD vs memory, each point labelled by its variant, axes padded, the frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    colours = {"llamacpp": "#4f46e5", "transformers": "#d97706"}
    for r in rows:
        ax.scatter(r["footprint_mib"], r["kld_mean"], s=60 if not r["is_reference"] else 90, zorder=3,
                   marker="*" if r["is_reference"] else "o", color=colours.get(r["backend"], "#555"))
        ax.annotate(r["variant"] + (" (reference)" if r["is_reference"] else ""), (r["footprint_mib"], r["kld_mean"]),
                    textcoords="offset points", xytext=(6, 5), fontsize=8)
    front = frontier(rows)
    if len(front) > 1:
        ax.plot([r["footprint_mib"] for r in front], [r["kld_mean"] for r in front], "--", color="#16a34a",
                zorder=2, label="frontier (nothing smaller is better)")
        ax.legend(loc="upper right", fontsize=8)
    xs = [r["footprint_mib"] for r in rows]
    ys = [r["kld_mean"] for r in rows]
    xpad = max((max(xs) - min(xs)) * 0.15, max(xs) * 0.05, 1.0)
    ypad = max((max(ys) - min(ys)) * 0.15, 1e-3)
    ax.set_xlim(min(xs) - xpad, max(xs) + xpad * 2.5)  # room on the right for the labels
    ax.set_ylim(min(min(ys) - ypad, -ypad * 0.5), max(ys) + ypad)
    ax.set_xlabel("memory MiB (weights + KV + overhead)")
    ax.set_ylabel("KLD mean vs the reference (lower is better)")
    ax.grid(alpha=0.3)
    ax.set_title("Quality loss vs memory", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def first_divergence(texts: list[str]) -> int | None:
    """Index of the first character where the texts stop agreeing (None if they all agree)."""
    texts = [t for t in texts if t is not None]
    if len(texts) < 2:
        return None
    n = min(len(t) for t in texts)
    for i in range(n):
        if len({t[i] for t in texts}) > 1:
            return i
    return None if all(len(t) == n for t in texts) else n


def word_diff_html(base: str, text: str) -> str:
    """``text`` escaped, the words that differ from ``base`` marked (<mark>), word by word. One or
    two words that happen to match between differing stretches count as differing too."""
    import difflib
    import re

    a, tokens = base.split(), re.findall(r"\S+|\s+", text)
    words = [t for t in tokens if not t.isspace()]
    marked = [False] * len(words)
    ops = difflib.SequenceMatcher(None, a, words, autojunk=False).get_opcodes()
    for k, (op, _i1, _i2, j1, j2) in enumerate(ops):
        stray = op == "equal" and 0 < k < len(ops) - 1 and j2 - j1 < 3
        if op != "equal" or stray:
            marked[j1:j2] = [True] * (j2 - j1)
    out, w, open_mark = [], 0, False
    for i, t in enumerate(tokens):
        if t.isspace():
            # a space inside a marked stretch stays inside the mark
            nxt = w < len(words) and marked[w]
            if open_mark and not nxt:
                out.append("</mark>")
                open_mark = False
            out.append(_esc(t))
            continue
        if marked[w] and not open_mark:
            out.append("<mark>")
            open_mark = True
        elif not marked[w] and open_mark:
            out.append("</mark>")
            open_mark = False
        out.append(_esc(t))
        w += 1
    if open_mark:
        out.append("</mark>")
    return "".join(out)


FINISH_WORDS = {"stop": "finished (end of text)", "length": "stopped at the token limit",
                "cancelled": "stopped by you", "error": "failed"}


def pane_markdown(state: dict, base: str | None = None) -> str:
    """One Compare pane: variant, memory, provenance, speed, finish reason, then the text (words
    that differ from ``base``, the first pane's text, highlighted once every pane is done)."""
    text = state["text"]
    body = word_diff_html(base, text) if base is not None else _esc(text)
    s = state["stats"]
    mem = state.get("memory") or {}
    figures = [f"{mem.get('total_mib', state.get('footprint_mib', 0)):,.1f} MiB"]
    if s.get("ttft_s") is not None:
        figures.append(f"TTFT {s['ttft_s'] * 1000:.0f} ms")
    if s.get("tokens_per_s"):
        figures.append(f"{s['tokens_per_s']:.1f} tok/s")
    if s:
        figures.append(f"{s.get('completion_tokens', 0)} tokens")
    reason = state.get("finish_reason") or s.get("finish_reason")
    status = (f" · **{FINISH_WORDS.get(reason, reason)}**" if reason else " · done") if state["done"] else " · streaming…"
    prov = state.get("provenance") or {}
    about = [x for x in (prov.get("tensors"), prov.get("note")) if x]
    if mem:
        about.append(f"memory {mem['weights_mib']:,.1f} weights + {mem['kv_mib']:,.1f} KV{_kv_type(mem)} "
                     f"({mem['n_ctx']} ctx x {mem['slots']}) + {mem['overhead_mib']:,.1f} overhead")
    lines = [f"**{state['variant']}** · {' · '.join(figures)}{status}"]
    if about:
        lines.append(f"<small>{_esc(' · '.join(about))}</small>")
    if prov.get("warning"):
        lines.append(f"<small>⚠ {_esc(prov['warning'])}</small>")
    return "  \n".join(lines) + f"\n\n{body}"


def _esc(t: str) -> str:
    return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")


def evaluate_legend(rows: list[dict], scoring: str) -> str:
    ref = next((r for r in rows if r["is_reference"]), None)
    lines = []
    if ref is not None:
        lines.append(f"**Reference:** {ref['variant']} · {ref.get('note') or ''}")
    lines.append(f"KLD: mean KL divergence from the reference's next-token distribution (0 = identical); top-1 agree: "
                 f"how often the most likely token is the reference's; PPL on the same tokens ({scoring} positions). "
                 f"{MEMORY_LEGEND}")
    if imatrix_gain := gain_markdown(rows):  # TYPE and TYPE+imatrix both evaluated
        lines.append(imatrix_gain)
    return "  \n".join(lines)


def build_compare(h: Services):
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", lines=3, scale=4, value="Explain what quantization does to a neural network.")
        with gr.Column(scale=2):
            variants = gr.Dropdown(variant_menu(h.registry), value=["llamacpp:Q8_0", "llamacpp:Q4_0"], multiselect=True,
                                   label=f"Variants (up to {MAX_COMPARE})", max_choices=MAX_COMPARE,
                                   allow_custom_value=True, info=KV_INFO)
            model = gr.Textbox(value="embedded", label="Model source")
        image = gr.Image(type="pil", sources=["upload", "clipboard"], label="Picture (vision models)", scale=1,
                         height=160, elem_id="compare-image")
    with gr.Row():
        max_new = gr.Slider(1, 1024, value=128, step=1, label="Max new tokens")
        temperature = gr.Slider(0, 2, value=0.0, step=0.05, label="Temperature (same seed for all)")
        seed = gr.Number(value=0, precision=0, label="Seed")
    with gr.Row():
        run = gr.Button("Compare", variant="primary", elem_id="compare-run")
        stop = gr.Button("Stop", variant="stop")
        free = gr.Button("Unload compared variants", elem_id="compare-free")
    divergence = gr.Markdown(elem_id="compare-divergence")
    with gr.Row():
        panes = [gr.Markdown(elem_id=f"pane-{i}", visible=i < 2, container=True) for i in range(MAX_COMPARE)]
    last = gr.State({})  # the last comparison {prompt, model, panes}: the token heatmap reads it

    @gradio_errors
    def compare_ui(prompt, variants, model, max_new, temperature, seed, picture):
        picture = attachments.from_pil(picture) if picture is not None else None
        for states in h.compare(prompt, variants, model, max_new, temperature, seed, image=picture):
            done = all(s["done"] for s in states)
            cut = first_divergence([s["text"] for s in states]) if done else None
            base = states[0]["text"] if done else None
            updates = [gr.update(value=pane_markdown(states[i], base if i else None), visible=True) if i < len(states)
                       else gr.update(value="", visible=False) for i in range(MAX_COMPARE)]
            if done:
                msg = ("All outputs are identical." if cut is None else
                       f"Outputs first diverge at character {cut}: words that differ from the first pane are highlighted.")
            else:
                msg = "Streaming…"
            yield [msg, *updates, {"prompt": prompt, "model": model, "panes": states}]

    ev = run.click(compare_ui, [prompt, variants, model, max_new, temperature, seed, image], [divergence, *panes, last],
                   api_visibility="private", concurrency_id="lab", concurrency_limit=1)
    stop.click(None, None, None, cancels=[ev], api_visibility="private")
    # Compared variants stay loaded (up to 4) so the next comparison starts at once; this frees them.
    free.click(h.release_lab, None, divergence, api_visibility="private", concurrency_id="lab")
    build_divergence(h, last)  # each reply's tokens coloured by KLD from a reference (ui/lab_divergence.py)


def build_evaluate(h: Services):
    with gr.Row():
        variants = gr.Dropdown(variant_menu(h.registry), multiselect=True, label="Variants", allow_custom_value=True,
                               info=KV_INFO,
                               value=["llamacpp:Q8_0", "llamacpp:Q4_K_M", "llamacpp:Q2_K", "transformers:nf4"])
        reference = gr.Dropdown(variant_menu(h.registry), value=DEFAULT_REFERENCE, label="Reference (unquantized)")
    with gr.Row():
        model = gr.Textbox(value="embedded", label="Model source")
        text_file = gr.File(label="Evaluation text (optional .txt; default: Python standard-library docstrings)",
                            file_types=[".txt", ".md"], type="filepath")
        max_tokens = gr.Slider(128, 8192, value=1024, step=64, label="Tokens to score")
        window = gr.Slider(64, 2048, value=256, step=64, label="Window")
        scoring = gr.Dropdown(list(SCORINGS), value="all", label="Scoring",
                              info="llama.cpp: llama-perplexity's convention (second half of each chunk scored)")
    with gr.Row():
        run = gr.Button("Evaluate", variant="primary", elem_id="evaluate-run")
        stop = gr.Button("Stop", variant="stop", elem_id="evaluate-stop")
    legend = gr.Markdown(elem_id="evaluate-legend")
    table = gr.Dataframe(headers=TABLE_COLUMNS, label="Quality vs the reference (lower KLD is better)", interactive=False,
                         elem_id="evaluate-table", wrap=True)
    provenance_md = gr.Markdown(elem_id="evaluate-provenance")
    plot = gr.Plot(label="Quality loss (KLD) vs memory", elem_id="evaluate-plot")
    with gr.Row():
        csv_out = gr.File(label="CSV")
        json_out = gr.File(label="JSON")

    @gradio_errors
    async def evaluate_ui(variants, reference, model, text_file, max_tokens, window, scoring, progress=gr.Progress()):
        rows = await cancellable(lambda cancel: h.evaluate(variants, text_file, max_tokens, model, reference, window,
                                                           scoring, progress=lambda f, m: progress(f, desc=m),
                                                           cancel=cancel))
        out = Path(tempfile.mkdtemp(prefix="quantlab-eval-"))
        pd.DataFrame([{k: v for k, v in r.items() if k != "memory"} for r in rows]).to_csv(
            out / "evaluation.csv", index=False)
        (out / "evaluation.json").write_text(json.dumps(rows, indent=2))
        return (evaluate_legend(rows, scoring), table_rows(rows), provenance_markdown(rows), quality_plot(rows),
                str(out / "evaluation.csv"), str(out / "evaluation.json"))

    ev = run.click(evaluate_ui, [variants, reference, model, text_file, max_tokens, window, scoring],
                   [legend, table, provenance_md, plot, csv_out, json_out],
                   api_visibility="private", concurrency_id="lab", concurrency_limit=1)
    stop.click(None, None, None, cancels=[ev], api_visibility="private")
