"""The Notebook section: free-form text continuation without the chat template (what a base model
is for, and how text-generation-webui's Notebook works). The continuation streams into the same
box, after the prompt; Stop keeps what came; the token counts show under it."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backends.base import MAX_NEW_TOKENS_LIMIT
from serving.services import Services
from serving.zerogpu import gpu_task
from ui.edge import client_of, gradio_errors

PLACEHOLDER = "Once upon a time, in a village by the sea,"


@dataclass
class NotebookSection:
    text: gr.Textbox
    generate: gr.Button
    stop: gr.Button
    counts: gr.Markdown
    params: list  # max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop: /complete's order


def format_counts(stats: dict) -> str:
    if not stats:
        return ""
    parts = [f"**{stats.get('prompt_tokens', 0)}** prompt tokens + **{stats.get('completion_tokens', 0)}** "
             f"generated = {stats.get('prompt_tokens', 0) + stats.get('completion_tokens', 0)} tokens"]
    if stats.get("tokens_per_s"):
        parts.append(f"{stats['tokens_per_s']:.1f} tok/s")
    if stats.get("finish_reason"):
        parts.append(f"finish: {stats['finish_reason']}")
    return " · ".join(parts)


def build_notebook(h: Services, slots: int = 1) -> NotebookSection:
    with gr.Row():
        with gr.Column(scale=4):
            text = gr.Textbox(label="Text", lines=16, max_lines=60, placeholder=PLACEHOLDER, elem_id="notebook-text",
                              buttons=["copy"], info="Sent to the model as is (no chat template); the continuation "
                                                      "is appended here")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="notebook-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="notebook-stop")
                undo = gr.Button("Undo", elem_id="notebook-undo")
            counts = gr.Markdown(elem_id="notebook-counts")
        with gr.Column(scale=2, min_width=260):
            max_new = gr.Slider(1, min(MAX_NEW_TOKENS_LIMIT, 8192), value=200, step=1, label="Max new tokens",
                                elem_id="notebook-max-new")
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature", info="0 = greedy",
                                    elem_id="notebook-temperature")
            top_p = gr.Slider(0.01, 1, value=0.95, step=0.01, label="Top p")
            top_k = gr.Slider(0, 200, value=40, step=1, label="Top k (0 = off)")
            rep = gr.Slider(0.8, 2, value=1.0, step=0.01, label="Repetition penalty")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            stop_strings = gr.Textbox(label="Stop at", lines=2, placeholder="one string per line")
    params = [max_new, temperature, top_p, top_k, rep, seed, stop_strings]
    before = gr.State("")  # the text before the last Generate, for Undo

    @gpu_task
    @gradio_errors
    def continue_text(request: gr.Request, prompt, *params):  # request first: Gradio injects it by position
        continuation = ""
        for piece in h.complete_pieces(prompt, *params, endpoint="ui", client=client_of(request)):
            continuation += piece.text
            yield prompt + continuation, format_counts(piece.stats) if piece.stats else gr.skip()

    private = {"api_visibility": "private"}
    remember = generate.click(lambda t: t, text, before, queue=False, **private)
    ev = remember.then(continue_text, [text, *params], [text, counts], concurrency_id="generate",
                       concurrency_limit=slots, show_progress="minimal", **private)
    stop.click(None, None, None, cancels=[ev], **private)
    undo.click(lambda b: b or gr.skip(), before, text, cancels=[ev], queue=False, **private)
    return NotebookSection(text, generate, stop, counts, params)
