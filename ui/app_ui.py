"""Assembles the Blocks: one tab per section, plus the API-only endpoints.

Model-bound events share the concurrency id "generate" (limit = what the backend can run at once)
so the queue holds the rest and shows their position; loading has its own id so a load never
waits behind a long reply.
"""

import gradio as gr

from ui.chat import build_chat
from ui.edge import client_of, gradio_errors
from serving.services import Services
from serving.zerogpu import gpu_task
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
                chat_section = build_chat(h, slots)
            with gr.Tab("Model", id="model") as model_tab:
                refresh_model, model_outputs = build_model(h, settings.model, settings.backend, settings.quantization,
                                                            settings.api_base, badge, badge_text)
            with gr.Tab("Monitor", id="monitor") as monitor_tab:
                timer, refresh_monitor, monitor_outputs = build_monitor(h)
            with gr.Tab("Compare", id="compare") as compare_tab:
                build_compare(h)
            with gr.Tab("Evaluate", id="evaluate") as evaluate_tab:
                build_evaluate(h)
        blocks.load(refresh_model, None, model_outputs, api_visibility="private", queue=False)
        # Restore the saved conversation, unless the user already started one in this page.
        blocks.load(lambda saved, current: gr.skip() if current else (saved or []),
                    [chat_section.saved, chat_section.chatbot], chat_section.chatbot, api_visibility="private",
                    queue=False)
        # The monitor polls only while its tab is open.
        monitor_tab.select(lambda: gr.Timer(active=True), None, timer, api_visibility="private").then(
            refresh_monitor, None, monitor_outputs, api_visibility="private")
        for tab in (chat_tab, model_tab, compare_tab, evaluate_tab):
            tab.select(lambda: gr.Timer(active=False), None, timer, api_visibility="private")

        @gradio_errors
        def chat(message: str, history: list[dict], system_prompt: str = "", max_new_tokens: int = 512,
                 temperature: float = 0.7, top_p: float = 0.95, top_k: int = 40, repetition_penalty: float = 1.0,
                 seed: int = -1, request: gr.Request = None) -> tuple[str, dict]:  # hint = the two outputs
            """Stream a reply to `message` given `history` (a list of {role, content} messages).
            Yields (reply so far, {}); the final item carries the request's stats (TTFT, tok/s, tokens)."""
            yield from h.chat(message, history, system_prompt, max_new_tokens, temperature, top_p, top_k,
                              repetition_penalty, seed, endpoint="chat", client=client_of(request))

        gr.api(gpu_task(chat), api_name="chat", concurrency_id="generate", concurrency_limit=slots)

        def status() -> dict:
            """The loaded model and the loading state (the same body as GET /health)."""
            return h.model_status()

        gr.api(status, api_name="model_status", concurrency_limit=None)

        @gradio_errors
        def stats(last: int = 50) -> dict:
            """Memory (process RSS/CPU, each GPU via NVML, torch CUDA, the loaded model's footprint) and
            the latency of the last `last` requests (TTFT, TPOT, tok/s, tokens, outcome)."""
            return h.stats(last=last)

        gr.api(stats, api_name="stats", concurrency_limit=None)

        @gradio_errors
        def cached_models() -> list[dict]:
            """Models on disk: Hub repos in the Hugging Face cache (HF_HUB_CACHE / HF_HOME) and the GGUF variants
            and derived checkpoints in the app's --cache-dir, most recently used first. One
            {id, kind, repo_id, repo_type, size_bytes, nb_files, last_accessed, revisions, refs, folder} per item; each
            GGUF variant is its own item (id gguf:<folder>/<file>) with quantization, source, source_type, bpw, tensors,
            note, warning and load (the /load_model arguments that load it)."""
            return h.cached_models()

        gr.api(cached_models, api_name="cached_models", concurrency_limit=None)

        @gradio_errors
        def delete_cached(item_id: str) -> str:
            """Delete one cached model by its `id` from /cached_models (hub:org/name, gguf:<folder>/<file> for one
            variant, gguf:<folder> for every variant of a source, hf:<folder>).
            Refuses the folder of the loaded model, ids outside the caches, and deletes nothing while a model loads."""
            return h.delete_cached(item_id)

        gr.api(delete_cached, api_name="delete_cached", concurrency_id="load", concurrency_limit=1)

        @gradio_errors
        def compare(prompt: str, variants: list[str], model: str = "embedded", max_new_tokens: int = 128,
                    temperature: float = 0.0, seed: int = 0) -> list[dict]:
            """Stream the same prompt through 2-4 variants at once (e.g. ["llamacpp:Q8_0", "transformers:nf4"]).
            Yields one {variant, text, done, finish_reason, stats, memory, provenance, footprint_mib} per variant:
            memory = {weights, KV (n_ctx x slots), overhead, total} as /stats shows it; provenance = the variant's
            source and its type, a warning when it has more bits than its source, its tensor types and bpw.
            Greedy (temperature 0) or seeded runs repeat exactly."""
            yield from h.compare(prompt, variants, model, max_new_tokens, temperature, seed)

        gr.api(gpu_task(compare), api_name="compare", concurrency_id="lab", concurrency_limit=1)

        @gradio_errors
        def evaluate(variants: list[str], text_path: str = "", max_tokens: int = 1024, model: str = "embedded",
                     reference: str = "transformers:fp32", window: int = 256, scoring: str = "all") -> list[dict]:
            """Perplexity, mean/p99 KL divergence and top-1 agreement of each variant against the reference on
            the same token ids, with memory and tok/s. text_path: a text file on the server ('' = stdlib docs).
            scoring: "all" scores every position of each window; "llama.cpp" follows llama-perplexity (chunks of
            `window` tokens starting with BOS, only the second half of each scored, KLD as --kl-divergence), so
            with GGUF variants and a GGUF reference such as "llamacpp:F16" the figures match llama-perplexity's.
            The first row is the reference's own (is_reference true: KLD 0, top-1 1.0, its PPL and memory); every row
            carries bpw, source, source_type, note, warning, tensors and memory (weights, KV, overhead, total)."""
            return h.evaluate(variants, text_path, max_tokens, model, reference, window, scoring)

        gr.api(gpu_task(evaluate, duration=600), api_name="evaluate", concurrency_id="lab", concurrency_limit=1)
    blocks.queue(default_concurrency_limit=1, max_size=64)
    return blocks
