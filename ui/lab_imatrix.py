"""The Imatrix tab: compute a model's importance matrix from a calibration text (llama.cpp's method),
then see what it buys: each low-bit GGUF type evaluated with and without it against the F16, on a
text that was not the calibration text."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from serving.lab_tools import GAIN_TOKENS, LabTools
from serving.services import Services
from ui.edge import cancellable, gradio_errors
from ui.lab import TABLE_COLUMNS, provenance_markdown, table_rows

TYPES = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q4_0", "IQ4_XS", "Q5_K_M"]
GAIN_COLUMNS = ["type", "KLD mean without", "KLD mean with", "KLD change %", "KLD p99 without", "KLD p99 with",
                "top-1 % without", "top-1 % with"]


def gain_table(gain: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[g["type"], round(g["kld_mean_without"], 4), round(g["kld_mean_with"], 4),
                          g["kld_change_pct"], round(g["kld_p99_without"], 3), round(g["kld_p99_with"], 3),
                          round(g["top1_without"] * 100, 1), round(g["top1_with"] * 100, 1)] for g in gain],
                        columns=GAIN_COLUMNS)


def build_imatrix(h: Services):
    tools = LabTools(h)
    gr.Markdown("An importance matrix weighs each weight by how strongly the model's activations use it, so the "
                "quantizer spends its precision where it matters (llama.cpp's `llama-imatrix` method). Variants made "
                "with it are named `TYPE+imatrix`, e.g. `llamacpp:Q4_K_M+imatrix`, in Compare and Evaluate too.")
    with gr.Row():
        model = gr.Textbox(value="embedded", label="Model source (GGUF)")
        calibration = gr.File(label="Calibration text (optional .txt; default: built-in text)",
                              file_types=[".txt", ".md"], type="filepath", elem_id="imatrix-calibration")
    compute = gr.Button("Compute importance matrix", variant="primary", elem_id="imatrix-run")
    status = gr.Markdown(elem_id="imatrix-status")
    with gr.Row():
        types = gr.Dropdown(TYPES, value=["Q2_K", "Q3_K_M"], multiselect=True, label="GGUF types",
                            allow_custom_value=True, elem_id="imatrix-types")
        text_file = gr.File(label="Held-out evaluation text (optional; default: Python docstrings)",
                            file_types=[".txt", ".md"], type="filepath")
        max_tokens = gr.Slider(256, 8192, value=GAIN_TOKENS, step=64, label="Tokens to score")
    measure = gr.Button("Measure what it buys", elem_id="imatrix-gain-run")
    gain = gr.Dataframe(headers=GAIN_COLUMNS, interactive=False, elem_id="imatrix-gain",
                        label="KLD vs the F16, without and with the importance matrix (negative change: it helps)")
    rows_table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, elem_id="imatrix-rows", label="Evaluate's rows", wrap=True)
    prov = gr.Markdown(elem_id="imatrix-provenance")

    @gradio_errors
    async def compute_ui(model, calibration, progress=gr.Progress()):
        rec = await cancellable(lambda cancel: tools.imatrix_compute(model, calibration,
                                                                     progress=lambda f, m: progress(f, desc=m),
                                                                     cancel=cancel))
        return (f"**Importance matrix ready** · {rec['line']} · `{rec['file']}`  \n"
                f"`+imatrix` variants of this model use it from now on.")

    compute.click(compute_ui, [model, calibration], status, api_visibility="private", concurrency_id="lab",
                  concurrency_limit=1)

    @gradio_errors
    async def measure_ui(model, types, text_file, max_tokens, progress=gr.Progress()):
        out = await cancellable(lambda cancel: tools.imatrix_gain(model, types, text_file, max_tokens,
                                                                  progress=lambda f, m: progress(f, desc=m),
                                                                  cancel=cancel))
        im = out["imatrix"]
        line = f"**Importance matrix:** {im['line']}" if im else ""
        return gain_table(out["gain"]), table_rows(out["rows"]), line + "\n\n" + provenance_markdown(out["rows"])

    measure.click(measure_ui, [model, types, text_file, max_tokens], [gain, rows_table, prov],
                  api_visibility="private", concurrency_id="lab", concurrency_limit=1)
