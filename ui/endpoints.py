"""Every endpoint of the Gradio API, each parameter described for the "Use via API" page: generation
(/chat, /complete), models (/load_model, /unload_model, /convert_to_gguf), status and caches
(/model_status, /stats, /cached_models, /delete_cached) and the lab (/compare, /evaluate). This is
the one place an endpoint is defined (``register_api``); the sections only lay out and wire the UI.
New parameters go after the existing ones, with defaults, so older gradio_client calls keep working.

No ``from __future__ import annotations`` here: gr.api reads the return annotation as an object
(``tuple[str, dict]`` = two outputs); as a string it would make one output holding a pair."""

import gradio as gr

from serving.services import Services
from serving.zerogpu import gpu_task
from ui.api_docs import described_api
from ui.edge import cancellable, client_of, gradio_errors

V1_NOTE = ("OpenAI clients: the same server speaks the OpenAI API at /v1 (/v1/chat/completions, "
           "/v1/completions, /v1/models, /v1/embeddings); Anthropic clients its Messages API (/v1/messages, "
           "/v1/messages/count_tokens); Ollama clients the Ollama API at /api (/api/chat, /api/generate, /api/tags, "
           "/api/ps, /api/show, /api/version, /api/embed, /api/embeddings).")


def register_chat_api(h: Services, slots: int) -> None:
    @gradio_errors
    def chat(message: str, history: list[dict], system_prompt: str = "", max_new_tokens: int = 512,
             temperature: float = 0.7, top_p: float = 0.95, top_k: int = 40, repetition_penalty: float = 1.0,
             seed: int = -1, min_p: float = 0.0, typical_p: float = 1.0, presence_penalty: float = 0.0,
             frequency_penalty: float = 0.0, dry_multiplier: float = 0.0, xtc_probability: float = 0.0,
             xtc_threshold: float = 0.1, mirostat: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
             no_repeat_ngram_size: int = 0, stop: str = "", enable_thinking: str = "auto",
             request: gr.Request = None) -> tuple[str, dict]:  # hint = the two outputs
        """Stream a reply to `message` given `history`. Yields (reply so far, {}); the final item carries
        the request's stats (TTFT, tok/s, tokens). A sampler the loaded backend cannot honour is refused
        naming it. OpenAI clients: the same server speaks /v1/chat/completions.

        Args:
            message: the user's new message
            history: the conversation so far, a list of {"role": "user"|"assistant"|"system", "content": text}
            system_prompt: system message put first ("" = none, or the history's own)
            max_new_tokens: longest reply, in tokens
            temperature: sampling temperature; 0 = greedy (always the most likely token)
            top_p: nucleus sampling: keep the most likely tokens up to this total probability (1 = off)
            top_k: keep only the k most likely tokens (0 = off)
            repetition_penalty: divide the scores of tokens already present (1 = off)
            seed: sampling seed for a repeatable reply (-1 = random)
            min_p: drop tokens less likely than min_p times the top token's probability (0 = off; 1 = greedy)
            typical_p: locally typical sampling (1 = off)
            presence_penalty: subtract this once from every token already present (OpenAI's; 0 = off)
            frequency_penalty: subtract this per occurrence of a token already present (OpenAI's; 0 = off)
            dry_multiplier: DRY penalty on repeated sequences (llama.cpp; 0 = off)
            xtc_probability: XTC: chance of excluding the top choices (llama.cpp; 0 = off)
            xtc_threshold: XTC: tokens above this probability count as top choices
            mirostat: Mirostat mode, 0 = off, 1 or 2 (llama.cpp; replaces top-k/top-p)
            mirostat_tau: Mirostat target surprise
            mirostat_eta: Mirostat learning rate
            no_repeat_ngram_size: never repeat an n-gram of this size (transformers; 0 = off)
            stop: stop strings, one per line: the reply ends before the first one
            enable_thinking: the chat template's enable_thinking: "auto" (the template's default), "on" or "off"
        """
        yield from h.chat(message, history, system_prompt, max_new_tokens, temperature, top_p, top_k,
                          repetition_penalty, seed, min_p, typical_p, presence_penalty, frequency_penalty,
                          dry_multiplier, xtc_probability, xtc_threshold, mirostat, mirostat_tau, mirostat_eta,
                          no_repeat_ngram_size, stop, enable_thinking, endpoint="chat", client=client_of(request))

    described_api(gpu_task(chat), api_name="chat", concurrency_id="generate", concurrency_limit=slots)

    @gradio_errors
    def complete(prompt: str, max_new_tokens: int = 200, temperature: float = 0.7, top_p: float = 0.95,
                 top_k: int = 40, repetition_penalty: float = 1.0, seed: int = -1, stop: str = "",
                 request: gr.Request = None) -> str:
        """Continue `prompt` as raw text (no chat template: what the Notebook tab does). Streams the
        continuation so far; the final item is the whole continuation. OpenAI clients: /v1/completions.

        Args:
            prompt: the text to continue, sent to the model as is
            max_new_tokens: longest continuation, in tokens
            temperature: sampling temperature; 0 = greedy (always the most likely token)
            top_p: nucleus sampling: keep the most likely tokens up to this total probability (1 = off)
            top_k: keep only the k most likely tokens (0 = off)
            repetition_penalty: divide the scores of tokens already present (1 = off)
            seed: sampling seed for a repeatable continuation (-1 = random)
            stop: stop strings, one per line: the continuation ends before the first one
        """
        for text, _ in h.complete(prompt, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
                                  stop, endpoint="complete", client=client_of(request)):
            yield text

    described_api(gpu_task(complete), api_name="complete", concurrency_id="generate", concurrency_limit=slots)


def load_model_doc(h: Services) -> str:
    menus = "; ".join(f"{name}: {', '.join(h.registry.menu(name))}" for name in h.registry.names())
    return f"""Load a model for the chat (the old one keeps serving until the new one is ready and finishes
    the replies it is running; a failed load, or one refused because its memory estimate does not fit,
    leaves it loaded). Streams status lines ("40% · step"); the last says what was loaded.
    Quantizations by backend: {menus} (llama.cpp also takes any GGUF type, e.g. Q3_K_S).

    Args:
        model: a GGUF file, a transformers checkpoint folder, a Hugging Face repo id, or "embedded" (SmolLM2-135M)
        backend: {" | ".join(h.registry.names())}
        quantization: one of the backend's quantizations listed above ("" = its default)
        api_base: remote backend: the engine's OpenAI-compatible base URL ("" = the server's --api-base)
        api_key: remote backend: the engine's key ("" = the server's --remote-api-key, which is sent to the server's own --api-base only; another URL gets no key)
        gguf_file: for a Hub repo holding several .gguf files, the one to load ("" = the only or first one)
        n_ctx: context length per conversation, in tokens (0 = the server's --n-ctx)
        parallel: conversations decoded together, each with its own KV cache (0 = the server's --parallel)
        n_threads: CPU threads of the model's engine, llama.cpp or torch (0 = the server's --threads, auto by default: the physical cores this process may use, adapted to the CPU other processes leave; a number is used exactly)
        n_gpu_layers: llama.cpp layers on the GPU (-1 = all; "" = the server's default)
        cache_type: llama.cpp KV cache type: f16, q8_0 or q4_0 ("" = the server's; quantized ones use flash attention)
        flash_attn: llama.cpp: use flash attention (None = the server's --flash-attn)
        device_map: transformers: "auto", "cpu", "cuda", ... ("" = the GPU if there is one, else the CPU)
        compute_dtype: transformers bitsandbytes 4-bit compute dtype: bfloat16, float16 or float32 ("" = bfloat16)
        double_quant: transformers bitsandbytes 4-bit: quantize the quantization constants too (None = yes, unless the server says --no-double-quant)
    """


def load_options(n_ctx, parallel, n_threads, n_gpu_layers, cache_type, flash_attn, device_map, compute_dtype,
                 double_quant) -> dict:
    """The loader options as Services.load_steps takes them: 0 / "" / None = the server's default."""
    return {"n_ctx": n_ctx or None, "parallel": parallel or None, "n_threads": n_threads or None,  # 0 / "auto": the server's
            "n_gpu_layers": None if n_gpu_layers in (None, "") else n_gpu_layers, "cache_type": cache_type,
            "flash_attn": flash_attn, "device_map": device_map, "compute_dtype": compute_dtype,
            "double_quant": double_quant}


def load_steps(h: Services, model, backend, quantization, api_base, api_key, gguf_file, **options):
    """(fraction, text) steps of a load with the form's or the API's values."""
    remote = {}
    if backend == "remote":  # empty: keep the server's --api-base / --remote-api-key
        remote = {"api_base": api_base, "api_key": api_key}
    yield from h.load_steps(model, backend, quantization, gguf_file=gguf_file, **remote, **options)


def register_model_api(h: Services) -> None:
    @gradio_errors
    def load_model(model: str, backend: str, quantization: str, api_base: str = "", api_key: str = "",
                   gguf_file: str = "", n_ctx: int = 0, parallel: int = 0, n_threads: int = 0,
                   n_gpu_layers: int | None = None, cache_type: str = "", flash_attn: bool | None = None,
                   device_map: str = "", compute_dtype: str = "", double_quant: bool | None = None) -> str:
        options = load_options(n_ctx, parallel, n_threads, n_gpu_layers, cache_type, flash_attn, device_map,
                               compute_dtype, double_quant)
        for fraction, text in load_steps(h, model, backend, quantization, api_base, api_key, gguf_file, **options):
            yield text if fraction >= 1.0 else f"{int(fraction * 100)}% · {text}"

    load_model.__doc__ = load_model_doc(h)
    described_api(load_model, api_name="load_model", concurrency_id="load", concurrency_limit=1)

    @gradio_errors
    def unload_model() -> str:
        """Unload the chat's model, freeing its memory (the lab's variants are separate)."""
        return h.unload_model()

    described_api(unload_model, api_name="unload_model", concurrency_id="load")

    @gradio_errors
    def convert_to_gguf(model: str, quantizations: list[str] | None = None) -> tuple[str, list[dict]]:
        """Convert a transformers checkpoint (safetensors) to GGUF with llama.cpp's own converter
        (convert_hf_to_gguf.py of the engine's llama.cpp), then make each GGUF type asked for from the
        F16. Streams ("40% · step", []); the final item is (summary, the new cache rows: F16 first, then
        each type, as /cached_models lists them). Made once and cached; a failed conversion leaves no file.

        Args:
            model: a checkpoint folder (config.json + *.safetensors) or a Hugging Face repo id of one
            quantizations: GGUF types to make from the F16, e.g. ["Q8_0", "Q4_K_M", "Q2_K"] (None or [] = the F16 only)
        """
        for fraction, text, rows in h.convert_to_gguf(model, quantizations):
            yield (text if fraction >= 1.0 else f"{int(fraction * 100)}% · {text}"), rows

    described_api(convert_to_gguf, api_name="convert_to_gguf", concurrency_id="load")


def register_status_api(h: Services) -> None:
    """/model_status, /stats, /cached_models and /delete_cached."""

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


def register_lab_api(h: Services) -> None:
    """The quantization lab: /compare and /evaluate."""

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


def register_api(h: Services, slots: int) -> None:
    """Every endpoint of the Gradio API, in the order the "Use via API" page lists them; ``slots``:
    how many generations run at once."""
    register_chat_api(h, slots)
    register_model_api(h)
    register_status_api(h)
    register_lab_api(h)
