"""The Report tab: one evaluated variant's report card (Markdown for a Hugging Face model card) with
the Evaluate plot as an image file beside it; both downloadable. ``write_report`` is what /report
on the Gradio API returns too."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import gradio as gr

from serving.lab_tools import LabTools
from serving.services import Services
from ui.edge import gradio_errors
from ui.lab import quality_plot

PLOT_NAME = "evaluate.png"


def write_report(tools: LabTools, model: str, variant: str, embed_plot: bool = False) -> tuple[str, str, str | None]:
    """(markdown, the .md file, the plot's .png file or None): the plot of every variant measured
    against the same reference, written next to the document (or embedded as a data URI)."""
    tools.report(model, variant)  # an unevaluated variant fails here, before any file is written
    out = Path(tempfile.mkdtemp(prefix="quantlab-report-"))
    rows = tools.rows_of(model, tools.reference_of(model, variant))
    png = None
    if rows:
        fig = quality_plot(rows)
        png = out / PLOT_NAME
        fig.savefig(png, format="png")
    ref = PLOT_NAME
    if png is not None and embed_plot:
        ref = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    md = tools.report(model, variant, plot_file=ref if png is not None else None)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in variant)
    path = out / f"report-{safe}.md"
    path.write_text(md)
    return md, str(path), str(png) if png else None


def build_report(h: Services):
    tools = LabTools(h)
    with gr.Row():
        model = gr.Textbox(value="embedded", label="Model source")
        variant = gr.Dropdown([], label="Evaluated variant", elem_id="report-variant", allow_custom_value=True,
                              info="each variant Evaluate has measured (run Evaluate first)")
        refresh = gr.Button("Refresh list", elem_id="report-refresh")
    make = gr.Button("Make report card", variant="primary", elem_id="report-run")
    preview = gr.Markdown(elem_id="report-preview")
    with gr.Row():
        md_file = gr.File(label="Report card (.md)", elem_id="report-md")
        png_file = gr.File(label="Evaluate plot (.png, next to the .md)", elem_id="report-png")

    @gradio_errors
    def list_ui(model):
        names = tools.evaluated(model)
        return gr.update(choices=names, value=names[0] if names else None)

    refresh.click(list_ui, model, variant, api_visibility="private")

    @gradio_errors
    def make_ui(model, variant):
        if not variant:
            raise gr.Error("Choose an evaluated variant (Refresh list after an Evaluate).")
        md, path, png = write_report(tools, model, variant)
        uri = "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode() if png else ""
        shown = md.replace(f"]({PLOT_NAME})", f"]({uri})") if png else md
        return shown, path, png

    make.click(make_ui, [model, variant], [preview, md_file, png_file], api_visibility="private")
    return refresh, list_ui, model, variant
