"""The Fit tab: which weight x KV-cache pairs fit a memory budget (or this machine's free memory) at
a context length and slot count, predicted memory beside measured quality and speed, the best
pair recommended and loaded with one click; a pair not measured yet can be evaluated from here."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from serving.lab_tools import LabTools
from serving.services import Services
from ui.edge import cancellable, gradio_errors

FIT_COLUMNS = ["", "weights", "KV cache", "predicted MiB", "± %", "basis", "fits", "KLD mean", "top-1 %", "decode tok/s"]
NOT_MEASURED = "not measured yet"
EVAL_TOKENS = 512


def fit_table(rows: list[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        out.append(["★" if r["recommended"] else "", r["weights"], r["kv"], r["predicted_mib"], r["tolerance_pct"],
                    r["basis"], "yes" if r["fits"] else "no",
                    round(r["kld_mean"], 4) if r["measured"] else NOT_MEASURED,
                    round(r["top1_agreement"] * 100, 1) if r["top1_agreement"] is not None else "",
                    round(r["decode_tokens_per_s"], 1) if r["decode_tokens_per_s"] else ""])
    return pd.DataFrame(out, columns=FIT_COLUMNS)


def recommendation_markdown(advice: dict) -> str:
    best = advice["recommended"]
    head = (f"**Budget:** {advice['where']} · context {advice['n_ctx']:,} x {advice['slots']} "
            f"slot{'s' if advice['slots'] != 1 else ''}")
    if best is None:
        return head + "  \n**Nothing fits**: raise the budget, lower the context or the slots."
    quality = (f"KLD {best['kld_mean']:.4f} vs {best['measured_reference']}" if best["measured"]
               else f"{NOT_MEASURED}: evaluate it below")
    return (f"{head}  \n**Recommended: {best['variant']}** · {best['predicted_mib']:,.1f} MiB predicted "
            f"(±{best['tolerance_pct']:.0f}%, {best['basis']}) · {quality}. Sorted by quality: measured pairs by KLD, "
            "then the rest by bits per weight; a pair fits when its prediction plus its tolerance is within the budget.")


def build_fit(h: Services):
    tools = LabTools(h)
    with gr.Row():
        model = gr.Textbox(value="embedded", label="Model source (GGUF)")
        budget = gr.Textbox(value="auto", label="Memory budget", elem_id="fit-budget",
                            info='MiB (e.g. 2048), a size (6GiB), or "auto": this machine\'s free RAM / GPU memory')
        n_ctx = gr.Number(value=4096, precision=0, label="Context length")
        slots = gr.Number(value=1, precision=0, label="Parallel slots")
    with gr.Row():
        run = gr.Button("Advise", variant="primary", elem_id="fit-run")
        load = gr.Button("Load the recommendation", elem_id="fit-load", interactive=False)
    summary = gr.Markdown(elem_id="fit-summary")
    table = gr.Dataframe(headers=FIT_COLUMNS, interactive=False, elem_id="fit-table", wrap=True,
                         label="Weight type x KV cache type (★ = recommended)")
    with gr.Row():
        pending = gr.Dropdown([], label="Not measured yet", elem_id="fit-pending", scale=3,
                              info="a pair that fits but has no measured quality: evaluate it against the F16")
        evaluate = gr.Button("Evaluate it", elem_id="fit-evaluate", scale=1)
    status = gr.Markdown(elem_id="fit-status")
    pick = gr.State(None)

    def show(advice: dict):
        best = advice["recommended"]
        waiting = [r["variant"] for r in advice["rows"] if r["fits"] and not r["measured"]]
        return (recommendation_markdown(advice), fit_table(advice["rows"]), best,
                gr.update(interactive=best is not None),
                gr.update(choices=waiting, value=waiting[0] if waiting else None))

    @gradio_errors
    def advise_ui(model, budget, n_ctx, slots):
        return show(tools.fit(budget, n_ctx, slots, model))

    outputs = [summary, table, pick, load, pending]
    run.click(advise_ui, [model, budget, n_ctx, slots], outputs, api_visibility="private")

    @gradio_errors
    def load_ui(model, best, n_ctx, slots):
        if not best:
            raise gr.Error("Advise first: there is no recommendation to load.")
        for fraction, text in tools.load_pick(model, best["weights"], best["kv"], n_ctx, slots):
            yield text if fraction >= 1.0 else f"{int(fraction * 100)}% · {text}"

    load.click(load_ui, [model, pick, n_ctx, slots], status, api_visibility="private", concurrency_id="load")

    @gradio_errors
    async def evaluate_ui(model, variant, budget, n_ctx, slots, progress=gr.Progress()):
        if not variant:
            raise gr.Error("Every pair that fits is measured already.")
        await cancellable(lambda cancel: h.evaluate([variant], None, EVAL_TOKENS, model, "llamacpp:F16", 256, "all",
                                                    progress=lambda f, m: progress(f, desc=m), cancel=cancel))
        return show(tools.fit(budget, n_ctx, slots, model))

    evaluate.click(evaluate_ui, [model, pending, budget, n_ctx, slots], outputs, api_visibility="private",
                   concurrency_id="lab", concurrency_limit=1)
