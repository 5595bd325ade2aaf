"""The Compare and Evaluate sections of the quantization lab."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from optimization.lab import DEFAULT_REFERENCE, MAX_COMPARE, variant_menu
from optimization.quality import SCORINGS
from ui.edge import gradio_errors
from serving.services import Services

TABLE_COLUMNS = ["variant", "ppl", "kld_mean", "kld_p99", "top1_agreement", "footprint_mib", "eval_tokens_per_s",
                 "decode_tokens_per_s", "is_reference"]


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


def pane_markdown(state: dict, diverge: int | None) -> str:
    text = state["text"]
    if diverge is not None and diverge < len(text):
        body = f"{_esc(text[:diverge])}<mark>{_esc(text[diverge:])}</mark>"
    else:
        body = _esc(text)
    s = state["stats"]
    figures = [f"{state['footprint_mib']:.0f} MiB"]
    if s.get("ttft_s") is not None:
        figures.append(f"TTFT {s['ttft_s'] * 1000:.0f} ms")
    if s.get("tokens_per_s"):
        figures.append(f"{s['tokens_per_s']:.1f} tok/s")
    if s:
        figures.append(f"{s.get('completion_tokens', 0)} tokens")
    status = "" if state["done"] else " · streaming…"
    return f"**{state['variant']}** · {' · '.join(figures)}{status}\n\n{body}"


def _esc(t: str) -> str:
    return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")


def build_compare(h: Services):
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", lines=3, scale=4, value="Explain what quantization does to a neural network.")
        with gr.Column(scale=2):
            variants = gr.Dropdown(variant_menu(h.registry), value=["llamacpp:Q8_0", "llamacpp:Q4_0"], multiselect=True,
                                   label=f"Variants (up to {MAX_COMPARE})", max_choices=MAX_COMPARE)
            model = gr.Textbox(value="embedded", label="Model source")
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

    @gradio_errors
    def compare_ui(prompt, variants, model, max_new, temperature, seed):
        for states in h.compare(prompt, variants, model, max_new, temperature, seed):
            cut = first_divergence([s["text"] for s in states]) if all(s["done"] for s in states) else None
            updates = [gr.update(value=pane_markdown(states[i], cut), visible=True) if i < len(states)
                       else gr.update(value="", visible=False) for i in range(MAX_COMPARE)]
            if all(s["done"] for s in states):
                msg = ("All outputs are identical." if cut is None else
                       f"Outputs first diverge at character {cut} (highlighted).")
            else:
                msg = "Streaming…"
            yield [msg, *updates]

    ev = run.click(compare_ui, [prompt, variants, model, max_new, temperature, seed], [divergence, *panes],
                   api_visibility="private", concurrency_id="lab", concurrency_limit=1)
    stop.click(None, None, None, cancels=[ev], api_visibility="private")
    # Compared variants stay loaded (up to 4) so the next comparison starts at once; this frees them.
    free.click(h.release_lab, None, divergence, api_visibility="private", concurrency_id="lab")


def build_evaluate(h: Services):
    with gr.Row():
        variants = gr.Dropdown(variant_menu(h.registry), multiselect=True, label="Variants",
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
    run = gr.Button("Evaluate", variant="primary", elem_id="evaluate-run")
    table = gr.Dataframe(headers=TABLE_COLUMNS, label="Quality vs the reference (lower KLD is better)", interactive=False,
                         elem_id="evaluate-table")
    plot = gr.ScatterPlot(x="footprint_mib", y="kld_mean", color="backend", title="Quality loss (KLD) vs memory",
                          height=320, tooltip=["variant", "ppl", "top1_agreement"])
    with gr.Row():
        csv_out = gr.File(label="CSV")
        json_out = gr.File(label="JSON")

    @gradio_errors
    def evaluate_ui(variants, reference, model, text_file, max_tokens, window, scoring, progress=gr.Progress()):
        rows = h.evaluate(variants, text_file, max_tokens, model, reference, window, scoring,
                          progress=lambda f, m: progress(f, desc=m))
        df = pd.DataFrame(rows)
        out = Path(tempfile.mkdtemp(prefix="quantlab-eval-"))
        df.to_csv(out / "evaluation.csv", index=False)
        (out / "evaluation.json").write_text(json.dumps(rows, indent=2))
        return (df[TABLE_COLUMNS].round(4), df, str(out / "evaluation.csv"), str(out / "evaluation.json"))

    run.click(evaluate_ui, [variants, reference, model, text_file, max_tokens, window, scoring], [table, plot, csv_out, json_out],
              api_visibility="private", concurrency_id="lab", concurrency_limit=1)
