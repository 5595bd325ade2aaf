"""The Model section: choose a file/repo, backend and quantization; load with progress; unload."""

from __future__ import annotations

import gradio as gr

from optimization import quantize
from ui.edge import gradio_errors
from ui.handlers import Handlers


def describe(status: dict) -> str:
    m = status.get("model")
    lines = []
    if m:
        lines.append(f"**Loaded:** {m['name']} · {m['backend']} · {m['quantization']} · "
                     f"{m['footprint_mib']:.0f} MiB · {m['device']} · context {m['context_length']}")
    else:
        lines.append("**No model loaded.**")
    if status.get("loading"):
        lines.append(f"Loading: {status['loading']}")
    if status.get("last_error"):
        lines.append(f"Last load error: {status['last_error']}")
    return "\n\n".join(lines)


def build_model(h: Handlers, default_model: str, default_backend: str, default_quant: str | None,
                default_api_base: str | None = None, badge: gr.Markdown | None = None, badge_text=None):
    status = h.model_status()
    with gr.Row():
        with gr.Column(scale=3):
            model = gr.Textbox(value=default_model, label="Model",
                               info="A GGUF file, a transformers folder, a Hub repo id, or 'embedded' (SmolLM2-135M)")
            with gr.Row():
                backend = gr.Dropdown(list(quantize.MENU), value=default_backend, label="Backend")
                quant = gr.Dropdown(list(quantize.MENU[default_backend]),
                                    value=default_quant or quantize.DEFAULTS[default_backend],
                                    label="Quantization", allow_custom_value=True)
            with gr.Accordion("Remote engine (backend: remote)", open=default_backend == "remote"):
                api_base = gr.Textbox(value=default_api_base or "", label="Base URL",
                                      placeholder="http://vllm-host:8000/v1 (vLLM, TGI, llama.cpp server)")
                api_key = gr.Textbox(value="", label="API key", type="password", placeholder="optional")
            with gr.Row():
                load = gr.Button("Load", variant="primary", elem_id="load")
                unload = gr.Button("Unload", elem_id="unload")
            progress_text = gr.Textbox(label="Status", interactive=False, elem_id="load-status")
        with gr.Column(scale=2):
            current = gr.Markdown(describe(status), elem_id="model-current")
            details = gr.JSON(value=status, label="Details")

    def on_backend(b):
        return gr.update(choices=list(quantize.MENU.get(b, ())), value=quantize.DEFAULTS.get(b))

    backend.change(on_backend, backend, quant, api_visibility="private")

    @gradio_errors
    def load_model(model: str, backend: str, quantization: str, api_base: str = "", api_key: str = "",
                   progress=gr.Progress()):
        remote = {"api_base": api_base or None, "api_key": api_key or None} if backend == "remote" else {}
        for fraction, line in h.load_steps(model, backend, quantization, **remote):
            progress(fraction, desc=line)
            yield line

    @gradio_errors
    def unload_model() -> str:
        return h.unload_model()

    def refresh():
        s = h.model_status()
        return (describe(s), s, badge_text(s)) if badge is not None else (describe(s), s)

    ev = load.click(load_model, [model, backend, quant, api_base, api_key], progress_text, api_name="load_model",
                    concurrency_id="load", concurrency_limit=1)
    outputs = [current, details] + ([badge] if badge is not None else [])
    ev.then(refresh, None, outputs, api_visibility="private")
    uev = unload.click(unload_model, None, progress_text, api_name="unload_model", concurrency_id="load")
    uev.then(refresh, None, outputs, api_visibility="private")
    return refresh, outputs
