"""Every endpoint of the Gradio API, each parameter described for the "Use via API" page: generation
(/chat, /complete), models (/load_model, /unload_model, /convert_to_gguf), status and caches
(/model_status, /stats, /cached_models, /delete_cached) and the lab (/compare, /evaluate,
/token_divergence, /arena_round, /arena_vote, /arena_results, /imatrix, /imatrix_gain, /fit, /report). This is
the one place an endpoint is defined (``register_api``); the sections only lay out and wire the UI.
The sampler, request and loader parameters, their defaults and descriptions come from their
declarations (``backends/options.py``), in declaration order: new ones go after the existing ones,
with defaults, so older gradio_client calls keep working.

No ``from __future__ import annotations`` here: gr.api reads the return annotation as an object
(``tuple[str, dict]`` = two outputs); as a string it would make one output holding a pair."""

import inspect

import gradio as gr

from backends.options import LOADER, Option
from serving.requests import CHAT_OPTIONS, COMPLETE_OPTIONS
from serving.services import Services
from serving.zerogpu import gpu_task
from ui import attachments
from ui.api_docs import described_api
from ui.edge import cancellable, client_of, gradio_errors
from ui.lab_divergence import token_divergence as divergence
from serving import arena

EMPTY = inspect.Parameter.empty
V1_NOTE = ("OpenAI clients: the same server speaks the OpenAI API at /v1 (/v1/chat/completions, "
           "/v1/responses, /v1/completions, /v1/models, /v1/embeddings); Anthropic clients its Messages API "
           "(/v1/messages, /v1/messages/count_tokens); Ollama clients the Ollama API at /api (/api/chat, "
           "/api/generate, /api/tags, /api/ps, /api/show, /api/version, /api/embed, /api/embeddings).")


CHAT_HEAD = [("message", str, EMPTY, "the user's new message"),
             ("history", list[dict], [], 'the conversation so far, a list of {"role": "user"|"assistant"|"system", '
                                        '"content": text} ([] = a new conversation)'),
             ("system_prompt", str, "", "system message put first (\"\" = none, or the history's own)")]
LOAD_HEAD = [("model", str, EMPTY, 'a GGUF file, a transformers checkpoint folder, a Hugging Face repo id, or '
                                   '"embedded" (SmolLM2-135M)'),
             ("backend", str, EMPTY, "{backends}"),
             ("quantization", str, EMPTY, 'one of the backend\'s quantizations listed above ("" = its default)'),
             ("api_base", str, "", "remote backend: the engine's OpenAI-compatible base URL (\"\" = the server's "
                                   "--api-base)"),
             ("api_key", str, "", "remote backend: the engine's key (\"\" = the server's --remote-api-key, which is "
                                  "sent to the server's own --api-base only; another URL gets no key)"),
             ("gguf_file", str, "", 'for a Hub repo holding several .gguf files, the one to load ("" = the only or '
                                    "first one)")]


# /chat's parameters that are not declared options, each placed after the declared option that was last when
# it came (so an option declared later still goes after it: positional callers keep working)
CHAT_EXTRA = {"enable_thinking": [
    ("files", list[dict] | None, None, "files attached to the message (gradio_client: [handle_file(path), ...]): "
                                       "pictures (PNG, JPEG, WebP, GIF, BMP) for a vision model; text, Markdown, code, "
                                       "CSV or PDF files as context blocks naming the file (None = none)"),
    ("model", str, "", 'the model to answer with: a name from GET /v1/models (with --models-dir any servable '
                       'model, loaded on demand) or "" = the chat\'s model')]}


def declare_api(fn, summary: str, head: list, options, returns, overrides: dict | None = None,
                extra: dict | None = None) -> inspect.Signature:
    """Give ``fn`` (taking ``*args``) the API Gradio reads: a signature of ``head`` ((name, type,
    default or EMPTY, description) each) then ``options`` (each declared option's name, type hint, API
    default and description; ``overrides``: {name: (default, description)}) then ``request``, the
    matching annotations, and a docstring of ``summary`` plus one ``Args`` line per parameter. ``extra``:
    {option name: parameters (like ``head``) placed right after that option}: a parameter that is not an
    option keeps its place when options are declared later, so older positional calls keep working.
    Returns the signature, to bind a call's values to their names."""
    overrides = overrides or {}
    rows = list(head)
    for o in options:
        rows.append((o.name, o.annotation, *overrides.get(o.name, (api_default(o), o.description))))
        rows += (extra or {}).get(o.name, [])
    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=type_)
              for name, type_, default, _ in rows]
    params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                    annotation=gr.Request))
    fn.__signature__ = inspect.Signature(params, return_annotation=returns)
    fn.__annotations__ = {**{p.name: p.annotation for p in params}, "return": returns}
    fn.__doc__ = summary + "\n\nArgs:\n" + "\n".join(f"    {name}: {text}" for name, _, _, text in rows)
    return fn.__signature__


def api_default(o: Option):
    """An option's default on the Gradio API: a loader option's "the server's default", else its own."""
    return o.unset if o.kind == "loader" else o.default


def bound(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """A call's values by parameter name, the defaults filled in."""
    call = signature.bind(*args, **kwargs)
    call.apply_defaults()
    return dict(call.arguments)


def register_chat_api(h: Services, slots: int) -> None:
    def chat(*args, **kwargs):
        values = bound(chat_signature, args, kwargs)
        request = values.pop("request")
        files = attachments.read_all(values.pop("files"))  # from Gradio's upload folder only
        history = attachments.history_with_files(values.pop("history"))  # past messages' files, likewise
        yield from h.chat(values.pop("message"), history, values.pop("system_prompt"),
                          endpoint="chat", client=client_of(request), files=files, model=values.pop("model"), **values)

    chat_signature = declare_api(
        chat, """Stream a reply to `message` given `history`. Yields (reply so far, {}); the final item carries
        the request's stats (TTFT, tok/s, tokens). A sampler the loaded backend cannot honour is refused
        naming it. OpenAI clients: the same server speaks /v1/chat/completions.""",
        CHAT_HEAD, CHAT_OPTIONS, tuple[str, dict], extra=CHAT_EXTRA)  # the hint = the two outputs
    described_api(gpu_task(gradio_errors(chat)), api_name="chat", concurrency_id="generate", concurrency_limit=slots)

    def complete(*args, **kwargs):
        values = bound(complete_signature, args, kwargs)
        request = values.pop("request")
        for text, _ in h.complete(values.pop("prompt"), endpoint="complete", client=client_of(request), **values):
            yield text

    complete_signature = declare_api(
        complete, """Continue `prompt` as raw text (no chat template: what the Notebook tab does). Streams the
        continuation so far; the final item is the whole continuation. OpenAI clients: /v1/completions.""",
        [("prompt", str, EMPTY, "the text to continue, sent to the model as is")], COMPLETE_OPTIONS, str,
        {"max_new_tokens": (200, "longest continuation, in tokens"),
         "seed": (-1, "sampling seed for a repeatable continuation (-1 = random)"),
         "stop": ("", "stop strings, one per line: the continuation ends before the first one")})
    described_api(gpu_task(gradio_errors(complete)), api_name="complete", concurrency_id="generate",
                  concurrency_limit=slots)


def load_model_summary(h: Services) -> str:
    menus = "; ".join(f"{name}: {', '.join(h.registry.menu(name))}" for name in h.registry.names())
    return f"""Load a model for the chat (the old one keeps serving until the new one is ready and finishes
    the replies it is running; a failed load, or one refused because its memory estimate does not fit,
    leaves it loaded). Streams status lines ("40% · step"); the last says what was loaded.
    Quantizations by backend: {menus} (llama.cpp also takes any GGUF type, e.g. Q3_K_S)."""


def load_options(*values) -> dict:
    """The loader options (``LOADER``'s order) as Services.load_steps takes them: 0 / "" / None = the
    server's default."""
    return {o.name: None if v == o.unset and o.unset is not None else v for o, v in zip(LOADER, values, strict=True)}


def load_steps(h: Services, model, backend, quantization, api_base, api_key, gguf_file, **options):
    """(fraction, text) steps of a load with the form's or the API's values."""
    remote = {}
    if backend == "remote":  # empty: keep the server's --api-base / --remote-api-key
        remote = {"api_base": api_base, "api_key": api_key}
    yield from h.load_steps(model, backend, quantization, gguf_file=gguf_file, **remote, **options)


def register_model_api(h: Services) -> None:
    def load_model(*args, **kwargs):
        values = bound(load_signature, args, kwargs)
        values.pop("request")
        head = [values.pop(name) for name, *_ in LOAD_HEAD]
        for fraction, text in load_steps(h, *head, **load_options(*values.values())):
            yield text if fraction >= 1.0 else f"{int(fraction * 100)}% · {text}"

    head = [(name, type_, default, text.format(backends=" | ".join(h.registry.names())))
            for name, type_, default, text in LOAD_HEAD]
    load_signature = declare_api(load_model, load_model_summary(h), head, LOADER, str)
    described_api(gradio_errors(load_model), api_name="load_model", concurrency_id="load", concurrency_limit=1)

    @gradio_errors
    def unload_model(model: str = "") -> str:
        """Unload the chat's model, freeing its memory (the lab's variants are separate).

        Args:
            model: with a model pool (--models-dir): the name of the model to unload, as GET /v1/models lists it ("" = the chat's model)
        """
        return h.unload_model(model)

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
                temperature: float = 0.0, seed: int = 0, image: dict | None = None) -> list[dict]:
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
            image: a picture every variant sees with the prompt, for a vision model's variants (gradio_client: handle_file(path); None = none)
        """
        picture = attachments.read(image) if image else None  # from Gradio's upload folder only
        yield from h.compare(prompt, variants, model, max_new_tokens, temperature, seed, image=picture)

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


def register_arena_api(h: Services) -> None:
    """Compare's token divergence (/token_divergence) and the blind arena (/arena_round, /arena_vote,
    /arena_results)."""

    @gradio_errors
    async def token_divergence(prompt: str, panes: list[dict], model: str = "embedded",
                               reference: str = "transformers:fp32") -> list[dict]:
        """Each Compare reply's tokens scored against a reference on the same prefix: one {variant, reference,
        tokens, first_divergence, kld_mean, kld_p99, top1_agreement, scored, reply_tokens, prompt_tokens} per
        pane. tokens: one {text, kld, same_top1, variant_top, reference_top} per reply token (KLD of the
        reference's next-token distribution from the variant's, the quality meter's definition; the tops are
        [token, probability] pairs, most likely first); first_divergence: the index of the first token where
        the variant's greedy choice is not the reference's (null: none). Replies are scored up to 512 tokens
        with their prompt.

        Args:
            prompt: the prompt the panes answered (as sent to /compare)
            panes: the panes /compare returned, [{"variant": "llamacpp:Q2_K", "text": ...}, ...]
            model: the source model the variants are made from (as sent to /compare)
            reference: the "backend:quantization" whose distributions are the truth
        """
        return await cancellable(lambda cancel: divergence(h, prompt, panes, model, reference, cancel))

    described_api(gpu_task(token_divergence), api_name="token_divergence", concurrency_id="lab",
                  concurrency_limit=1)

    @gradio_errors
    async def arena_round(prompt: str, contenders: list[str], model: str = "embedded", max_new_tokens: int = 128,
                          temperature: float = 0.7, seed: int = -1, reference: str = "") -> dict:
        """A blind round: two contenders answer `prompt` (same seed), shown as A and B in random order.
        Returns {round, prompt, A: {text, finish_reason}, B: {...}}, nothing that tells which is which;
        send the vote to /arena_vote with the round id to see the names.

        Args:
            prompt: the user message both contenders answer
            contenders: two "backend:quantization" variants of `model`, or more (each round draws two); a variant of another model is written "MODEL | backend:quantization"
            model: the source model of the contenders that name none
            max_new_tokens: longest reply per contender, in tokens
            temperature: sampling temperature (0 = greedy)
            seed: sampling seed shared by both (-1 = a random one)
            reference: a "backend:quantization" each reply's mean KLD is measured against, shown after the vote ("" = none)
        """
        return await cancellable(lambda cancel: arena.play_round(h, prompt, contenders, model, max_new_tokens,
                                                                 temperature, seed, reference, cancel=cancel))

    described_api(gpu_task(arena_round), api_name="arena_round", concurrency_id="lab", concurrency_limit=1)

    @gradio_errors
    def arena_vote(round_id: str, vote: str) -> dict:
        """Vote on a round and reveal it: {round, vote, winner, A: {name, model, variant, text, finish_reason,
        figures: {memory_mib, tokens_per_s, completion_tokens, kld_mean}}, B: {...}, results: the pair's row as
        /arena_results lists it}. A round takes one vote; votes are kept on the server across restarts.

        Args:
            round_id: the id /arena_round returned (its "round")
            vote: "A", "B", "tie" or "both bad"
        """
        return arena.vote(h, round_id, vote)

    described_api(arena_vote, api_name="arena_vote", concurrency_id="arena", concurrency_limit=None)

    @gradio_errors
    def arena_results() -> list[dict]:
        """The arena's results per pair of contenders (model_a < model_b by name): votes, a_wins, b_wins, ties,
        both_bad, a_win_rate (over decisive votes) with its 95 % Wilson interval ci_low..ci_high, and each
        side's mean KLD, memory MiB and tok/s over the rounds."""
        return arena.results(h)

    described_api(arena_results, api_name="arena_results", concurrency_limit=None)


def register_lab_tools_api(h: Services) -> None:
    """The lab's importance matrix (/imatrix, /imatrix_gain), fit advisor (/fit) and report card (/report)."""
    from serving.lab_tools import LabTools
    from ui.lab_report import write_report

    tools = LabTools(h)

    @gradio_errors
    async def imatrix(model: str = "embedded", calibration_path: str = "") -> dict:
        """Compute the model's importance matrix with llama.cpp's method (llama-imatrix's computation through
        the engine: squared activations entering each weight, over chunks of 512 tokens) and make it the one
        its "+imatrix" variants use (e.g. "llamacpp:Q4_K_M+imatrix" in /compare and /evaluate). Cached beside the
        variants: the same text twice is computed once. Returns its record: calibration, calibration_bytes,
        calibration_sha, tokens, chunks, chunk_size, method, file, path, line.

        Args:
            model: a GGUF model on the server ("embedded" = SmolLM2-135M); the matrix is computed on its F16
            calibration_path: a text file on the server to calibrate on ("" = the built-in calibration text, which the default evaluation text does not overlap)
        """
        return await cancellable(lambda cancel: tools.imatrix_compute(model, calibration_path, cancel=cancel))

    described_api(gpu_task(imatrix, duration=600), api_name="imatrix", concurrency_id="lab", concurrency_limit=1)

    @gradio_errors
    async def imatrix_gain(model: str = "embedded", types: list[str] | None = None, text_path: str = "",
                           max_tokens: int = 1024) -> dict:
        """What the importance matrix buys: each GGUF type evaluated with and without it against the F16 on
        a held-out text (refused when it is the calibration text). Returns {"rows": /evaluate's rows,
        "gain": per type {type, kld_mean_without, kld_mean_with, kld_change_pct, kld_p99_*, top1_*, ppl_*},
        "imatrix": the matrix's record}. Computes the built-in matrix first when the model has none.

        Args:
            model: a GGUF model on the server ("embedded" = SmolLM2-135M)
            types: low-bit GGUF types, e.g. ["Q2_K", "Q3_K_M", "Q4_K_M"] (None = Q2_K and Q3_K_M)
            text_path: the held-out text to score ("" = Python's standard-library docstrings)
            max_tokens: how many tokens of it to score
        """
        return await cancellable(lambda cancel: tools.imatrix_gain(model, types, text_path, max_tokens, cancel=cancel))

    described_api(gpu_task(imatrix_gain, duration=600), api_name="imatrix_gain", concurrency_id="lab",
                  concurrency_limit=1)

    @gradio_errors
    def fit(budget: str = "auto", n_ctx: int = 4096, slots: int = 1, model: str = "embedded") -> dict:
        """The fit advisor: every GGUF weight type x KV cache type (f16, q8_0, q4_0) of the model, its predicted
        memory at n_ctx x slots (weights + KV + overhead, with the tolerance of what the weights figure rests on:
        "measured" or "file" ±5%, "bpw" ±40%), whether it fits the budget (prediction plus tolerance within it),
        and its KLD, top-1 and decode tok/s where /evaluate has measured it (kld_mean null = not measured yet).
        Sorted by quality (measured pairs by KLD, then by bits per weight); "recommended" is the best pair that
        fits. Returns {budget_mib, where, n_ctx, slots, rows, recommended, text}. Load the pick with /load_model
        (backend "llamacpp", quantization = its weights, cache_type = its kv).

        Args:
            budget: MiB ("2048"), a size ("6GiB") or "auto" = this machine's free memory (90% of the available RAM, or of the GPUs' free memory when the server offloads to them)
            n_ctx: context length per slot, in tokens
            slots: parallel slots (each holds a KV cache of n_ctx)
            model: a GGUF model on the server ("embedded" = SmolLM2-135M)
        """
        return tools.fit(budget, n_ctx, slots, model)

    described_api(fit, api_name="fit", concurrency_limit=None)

    @gradio_errors
    def report(variant: str, model: str = "embedded", embed_plot: bool = True) -> str:
        """The report card of an evaluated variant: Markdown ready for a Hugging Face model card, with
        provenance (source, importance matrix), tensor mix and bpw, KLD mean/p99, top-1, PPL, memory, decode
        tok/s, KV cache type, the reference and text it was measured on, the machine, the other variants
        measured beside it and the Evaluate plot. Every figure is /evaluate's, with its decimals; the row
        itself closes the document as JSON.

        Args:
            variant: the variant as /evaluate named it, e.g. "llamacpp:Q4_K_M" (evaluate it first)
            model: the source model it was evaluated from ("embedded" = SmolLM2-135M)
            embed_plot: embed the plot as a data: URI (true), or refer to it as evaluate.png (false)
        """
        return write_report(tools, model, variant, embed_plot=embed_plot)[0]

    described_api(report, api_name="report", concurrency_limit=None)


def register_api(h: Services, slots: int) -> None:
    """Every endpoint of the Gradio API, in the order the "Use via API" page lists them; ``slots``:
    how many generations run at once."""
    register_chat_api(h, slots)
    register_model_api(h)
    register_status_api(h)
    register_lab_api(h)
    register_arena_api(h)
    register_lab_tools_api(h)
