"""Assembles the Blocks: one tab per section, plus the API-only endpoints.

Model-bound events share the concurrency id "generate" (limit = what the backend can run at once)
so the queue holds the rest and shows their position; loading has its own id so a load never
waits behind a long reply.
"""

import gradio as gr

from ui.api_docs import described_api, fill_trailing_defaults
from ui.chat import build_chat
from ui.edge import cancellable, gradio_errors
from ui.gradio_queue import quiet_queue
from ui.gradio_session import lazy_session_config
from serving.services import Services
from serving.zerogpu import gpu_task
from ui.endpoints import V1_NOTE, register_chat_api, register_model_api
from ui.notebook import build_notebook
from ui.sampling import restore_presets
from ui.model import build_model
from ui.lab import build_compare, build_evaluate
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
                build_notebook(h, slots)
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
        gr.Markdown(f"API: Gradio's endpoints are under \"Use via API\" below. {V1_NOTE}", elem_id="api-note")
        blocks.load(refresh_model, None, model_outputs, api_visibility="private", queue=False)
        blocks.load(fill_form, None, form, api_visibility="private", queue=False)  # the form shows what is loaded
        blocks.load(restore_presets, chat_section.sampling.saved_presets, chat_section.sampling.preset,
                    api_visibility="private", queue=False)
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
        for tab in (chat_tab, notebook_tab, model_tab, compare_tab, evaluate_tab):
            tab.select(lambda: gr.Timer(active=False), None, timer, api_visibility="private")

        register_chat_api(h, slots)
        register_model_api(h)

        def status() -> dict:
            """The loaded model (name, backend, quantization, footprint, context; its load options under
            "options"), the loading state and the last load error: the same body as GET /health."""
            return h.model_status()

        described_api(status, api_name="model_status", concurrency_limit=None)

        @gradio_errors
        def stats(last: int = 50) -> dict:
            """Memory (process RSS/CPU, each GPU via NVML, torch CUDA, the loaded model's footprint) and
            the latency of the last requests (TTFT, TPOT, tok/s, tokens, outcome).

            Args:
                last: how many of the most recent requests to list (1-1000)
            """
            return h.stats(last=last)

        described_api(stats, api_name="stats", concurrency_limit=None)

        @gradio_errors
        def cached_models() -> list[dict]:
            """Models on disk: Hub repos in the Hugging Face cache (HF_HUB_CACHE / HF_HOME) and the GGUF variants
            and derived checkpoints in the app's --cache-dir, most recently used first. One
            {id, kind, repo_id, repo_type, size_bytes, nb_files, last_accessed, revisions, refs, folder} per item; each
            GGUF variant is its own item (id gguf:<folder>/<file>) with quantization, source, source_type, bpw, tensors,
            note, warning and load (the /load_model arguments that load it)."""
            return h.cached_models()

        described_api(cached_models, api_name="cached_models", concurrency_limit=None)

        @gradio_errors
        def delete_cached(item_id: str) -> str:
            """Delete one cached model by its id from /cached_models. Refuses the folder of the loaded model, ids
            outside the caches, and deletes nothing while a model loads.

            Args:
                item_id: the item's id from /cached_models: hub:org/name, gguf:<folder>/<file> for one variant, gguf:<folder> for every variant of a source, hf:<folder>
            """
            return h.delete_cached(item_id)

        described_api(delete_cached, api_name="delete_cached", concurrency_id="load", concurrency_limit=1)

        @gradio_errors
        def compare(prompt: str, variants: list[str], model: str = "embedded", max_new_tokens: int = 128,
                    temperature: float = 0.0, seed: int = 0) -> list[dict]:
            """Stream the same prompt through 2-4 variants at once, same seed. Yields one {variant, text, done,
            finish_reason, stats, memory, provenance, footprint_mib} per variant: memory = {weights, KV (n_ctx x
            slots), overhead, total} as /stats shows it; provenance = the variant's source and its type, a warning
            when it has more bits than its source, its tensor types and bpw. Greedy or seeded runs repeat exactly.

            Args:
                prompt: the user message every variant answers (chat template applied)
                variants: 2-4 "backend:quantization" names, e.g. ["llamacpp:Q8_0", "transformers:nf4"]; a llama.cpp one may add its KV cache type, e.g. "llamacpp:Q8_0+kv:q4_0" (f16, q8_0, q4_0)
                model: the source model the variants are made from: a GGUF file, a checkpoint folder, a Hub repo id or "embedded"
                max_new_tokens: longest reply per variant, in tokens
                temperature: sampling temperature (0 = greedy, so the variants can be compared token by token)
                seed: sampling seed shared by every variant
            """
            yield from h.compare(prompt, variants, model, max_new_tokens, temperature, seed)

        described_api(gpu_task(compare), api_name="compare", concurrency_id="lab", concurrency_limit=1)

        @gradio_errors
        async def evaluate(variants: list[str], text_path: str = "", max_tokens: int = 1024, model: str = "embedded",
                           reference: str = "transformers:fp32", window: int = 256, scoring: str = "all") -> list[dict]:
            """Perplexity, mean/p99 KL divergence and top-1 agreement of each variant against the reference on
            the same token ids, with memory and tok/s. With GGUF variants, a GGUF reference such as
            "llamacpp:F16" and scoring "llama.cpp", the figures match llama-perplexity's. The first row is the
            reference's own (is_reference true); every row carries bpw, source, source_type, note, warning,
            tensors and memory (weights, KV, overhead, total). Cancelling the job stops it before the next window.

            Args:
                variants: "backend:quantization" names to score, e.g. ["llamacpp:Q8_0", "transformers:nf4"]; a llama.cpp one may add its KV cache type, e.g. "llamacpp:Q8_0+kv:q8_0" (f16, q8_0, q4_0), scored through that cache
                text_path: a text file on the server to score ("" = Python's standard-library docstrings)
                max_tokens: how many tokens of the text to score (at most 32768; only the start of the text that is scored is read)
                model: the source model the variants are made from: a GGUF file, a checkpoint folder, a Hub repo id or "embedded"
                reference: the "backend:quantization" every variant is measured against (its logits are the truth)
                window: tokens per scored window (the context each position sees)
                scoring: "all" scores every position of each window; "llama.cpp" follows llama-perplexity (chunks of `window` tokens from BOS, second half scored)
            """
            return await cancellable(lambda cancel: h.evaluate(variants, text_path, max_tokens, model, reference,
                                                               window, scoring, cancel=cancel))

        described_api(gpu_task(evaluate, duration=600), api_name="evaluate", concurrency_id="lab", concurrency_limit=1)
    blocks.queue(default_concurrency_limit=1, max_size=64)
    quiet_queue(blocks)  # event-driven instead of Gradio's 1 ms poll (ui/gradio_queue.py)
    lazy_session_config(blocks)  # no 13 ms of block configs per REST call (ui/gradio_session.py)
    fill_trailing_defaults(blocks)  # REST callers may leave out the newer parameters, as gradio_client's may
    return blocks
