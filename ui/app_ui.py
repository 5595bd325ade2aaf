"""Assembles the Blocks: one tab per section, plus the API-only endpoints (defined in ui/endpoints.py).

Model-bound events share the concurrency id "generate" (limit = what the backend can run at once)
so the queue holds the rest and shows their position; loading has its own id so a load never
waits behind a long reply.
"""

import gradio as gr

from ui.api_docs import fill_trailing_defaults
from ui.chat import build_chat
from ui.gradio_cancel import close_cancelled_steps
from ui.gradio_queue import quiet_queue
from ui.gradio_session import lazy_session_config
from serving.services import Services
from ui.endpoints import V1_NOTE, register_api
from ui.notebook import build_notebook
from ui.sampling import restore_presets
from ui.model import build_model
from ui.lab import build_compare, build_evaluate
from ui.lab_arena import build_arena
from ui.lab_fit import build_fit
from ui.lab_imatrix import build_imatrix
from ui.lab_report import build_report
from ui.monitor import build_monitor


def badge_text(status: dict) -> str:
    m = status.get("model")
    if m:
        return f"Serving **{m['name']}** · {m['backend']} · {m['quantization']} · {m['device']}"
    return "Loading a model…" if status.get("loading") else "No model loaded: open the Model tab"


def build_blocks(h: Services, settings) -> gr.Blocks:
    # Generations at once = the backend's batch slots (--parallel); the queue holds the rest and
    # shows each waiting user their position. The manager's per-model semaphore is the real guard, so a
    # model switched at run time to fewer slots still queues correctly.
    slots = max(1, settings.parallel)
    with gr.Blocks(title="QuantLab", analytics_enabled=False) as blocks:
        with gr.Row():
            gr.Markdown("## QuantLab · serve, monitor and compare quantized LLMs")
            badge = gr.Markdown(elem_id="model-badge")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat") as chat_tab:
                chat_section = build_chat(h, slots, chat_dir=settings.chat_dir)
            with gr.Tab("Notebook", id="notebook") as notebook_tab:
                notebook_section = build_notebook(h, slots)
            with gr.Tab("Model", id="model") as model_tab:
                refresh_model, model_outputs, fill_form, form = build_model(
                    h, settings.model, settings.backend, settings.quantization, settings.api_base, badge, badge_text,
                    models_dir=settings.models_dir, base_spec=h.base_spec)
            with gr.Tab("Monitor", id="monitor") as monitor_tab:
                timer, refresh_monitor, monitor_outputs = build_monitor(h)
            with gr.Tab("Compare", id="compare") as compare_tab:
                build_compare(h)
            with gr.Tab("Evaluate", id="evaluate") as evaluate_tab:
                build_evaluate(h)
            with gr.Tab("Arena", id="arena") as arena_tab:
                _, refresh_arena, arena_outputs = build_arena(h)
            with gr.Tab("Imatrix", id="imatrix") as imatrix_tab:
                build_imatrix(h)
            with gr.Tab("Fit", id="fit") as fit_tab:
                build_fit(h)
            with gr.Tab("Report", id="report") as report_tab:
                report_refresh = build_report(h)
        gr.Markdown(f"API: Gradio's endpoints are under \"Use via API\" below. {V1_NOTE}", elem_id="api-note")
        blocks.load(refresh_model, None, model_outputs, api_visibility="private", queue=False)
        blocks.load(fill_form, None, form, api_visibility="private", queue=False)  # the form shows what is loaded
        blocks.load(restore_presets, chat_section.sampling.saved_presets, chat_section.sampling.preset,
                    api_visibility="private", queue=False)
        notebook_section.wire_load(blocks, h, notebook_tab)  # saved presets; the loaded backend's samplers
        chat_section.wire_load(blocks)  # restore the saved chat (and its settings), keyboard keys
        # Every open page shows what is served within 2 s of a load done elsewhere.
        model_timer = gr.Timer(2.0)
        shown = gr.State(None)

        def poll_model(last):
            values = refresh_model()
            key = repr(values)
            return (gr.skip(),) * (len(values) + 1) if key == last else (key, *values)

        model_timer.tick(poll_model, shown, [shown, *model_outputs], api_visibility="private", concurrency_limit=None)
        # The monitor polls only while its tab is open.
        monitor_tab.select(lambda: gr.Timer(active=True), None, timer, api_visibility="private").then(
            refresh_monitor, None, monitor_outputs, api_visibility="private")
        _, list_reports, report_model, report_variant = report_refresh  # the Report tab lists what was evaluated
        report_tab.select(list_reports, report_model, report_variant, api_visibility="private")
        for tab in (chat_tab, notebook_tab, model_tab, compare_tab, evaluate_tab, arena_tab, imatrix_tab, fit_tab,
                    report_tab):
            tab.select(lambda: gr.Timer(active=False), None, timer, api_visibility="private")
        arena_tab.select(refresh_arena, None, arena_outputs, api_visibility="private")  # the votes kept on disk

        register_api(h, slots)  # every Gradio API endpoint (ui/endpoints.py)
    blocks.queue(default_concurrency_limit=1, max_size=64)
    close_cancelled_steps()  # a cancel that lands during a streaming step still ends it (ui/gradio_cancel.py)
    quiet_queue(blocks)  # event-driven instead of Gradio's 1 ms poll (ui/gradio_queue.py)
    lazy_session_config(blocks)  # no 13 ms of block configs per REST call (ui/gradio_session.py)
    fill_trailing_defaults(blocks)  # REST callers may leave out the newer parameters, as gradio_client's may
    return blocks
