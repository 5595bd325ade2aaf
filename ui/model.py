"""The Model section: choose a file/repo, backend and quantization; load with progress (a Hub
download's bytes included); unload; list and delete downloaded and derived models."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from backends.base import ModelSpec
from backends.errors import user_message
from backends.files.gguf import GGUF_FTYPES
from monitoring.model_memory import MEMORY_LEGEND, memory_line
from backends.options import LOADER, Option
from serving.model_names import model_rows
from serving.services import Services
from ui.edge import gradio_errors
from ui.endpoints import load_options, load_steps


def describe(status: dict) -> str:
    m = status.get("model")
    lines = []
    if m:
        lines.append(f"**Loaded:** {m['name']} · {m['backend']} · {m['quantization']} · "
                     f"{m['device']} · context {m['context_length']}")
        if m.get("memory"):  # the one memory definition, as Compare, Evaluate, the Monitor and /stats show it
            lines.append(f"**Memory:** {memory_line(m['memory'])}  \n<small>{MEMORY_LEGEND}</small>")
        if m.get("provenance"):
            p = m["provenance"]
            lines.append("**Provenance:** " + " · ".join(x for x in (p.get("tensors"), p.get("note")) if x)
                         + (f"  \n⚠ {p['warning']}" if p.get("warning") else ""))
    else:
        lines.append("**No model loaded.**")
    if status.get("loading"):
        step = status.get("loading_progress")
        done = f" · {int(step['fraction'] * 100)}% · {step['step']}" if step else ""
        lines.append(f"**Loading:** {status['loading']}{done}")
    if status.get("last_error"):
        lines.append(f"Last load error: {status['last_error']}")
    return "\n\n".join(lines)


def form_value(o: Option, value):
    """What the form shows for a loader option's ``value``: a flag as a bool, an unset one as its first
    choice or the API's "the server's default"."""
    if o.type is bool:
        return bool(value)
    if value is None or value == "":
        return o.choices[0] if o.choices else o.unset
    return value


def loader_control(o: Option, value):
    """The Model tab's control of a declared loader option, showing ``value``."""
    shown = {"label": o.label, "info": o.info, "elem_id": o.elem_id or None}
    if o.type is bool:
        return gr.Checkbox(value=form_value(o, value), **shown)
    if o.choices:
        return gr.Dropdown(list(o.choices), value=form_value(o, value), allow_custom_value=o.free, **shown)
    if o.type is str:  # a free text option (a file path)
        return gr.Textbox(value=form_value(o, value), **shown)
    return gr.Number(value=form_value(o, value), precision=0, minimum=o.low, **shown)


POOL_HEADERS = ["name", "status", "memory MiB", "running", "kind", "backend"]


def pool_table(rows: list[dict]) -> dict:
    """The Model tab's table of servable models, from GET /v1/models' rows (``serving.model_names``):
    the same names, statuses and memory (the one account)."""
    data = [[r["id"], r.get("status", "loaded") + (f": {r['error']}" if r.get("error") else ""),
             r.get("memory_mib") if r.get("memory_mib") is not None else "", r.get("running", ""),
             r.get("kind", "chat model"), r.get("backend", "")] for r in rows]
    return {"data": data, "headers": POOL_HEADERS}


CACHE_HEADERS = ["id", "kind", "size MiB", "files", "last used", "what it holds"]


def cache_table(items: list[dict]) -> dict:
    """Rows for the "Downloaded and derived models" table: one per Hub repo, GGUF variant and
    derived checkpoint; a variant says what it holds (tensor types, bpw) and where it came from."""
    def what(i: dict) -> str:
        return " · ".join(x for x in (i.get("tensors"), i.get("note"), ("⚠ " + i["warning"]) if i.get("warning")
                                      else None) if x)

    rows = [[i["id"], i["kind"], round(i["size_bytes"] / 2**20, 2), i["nb_files"],
             time.strftime("%Y-%m-%d %H:%M", time.localtime(i["last_accessed"])) if i["last_accessed"] else "", what(i)]
            for i in items]
    return {"data": rows, "headers": CACHE_HEADERS}


def build_model(h: Services, default_model: str, default_backend: str, default_quant: str | None,
                default_api_base: str | None = None, badge: gr.Markdown | None = None, badge_text=None,
                models_dir: Path | None = None, base_spec: ModelSpec | None = None):
    """The Model tab. Returns (refresh, its outputs, fill_form, its outputs): the app runs refresh and
    fill_form on page load, so the form opens showing what is loaded."""
    status = h.model_status()
    spec = base_spec or ModelSpec(source=default_model, backend=default_backend)
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                model = gr.Textbox(value=default_model, label="Model", scale=3, elem_id="model-source",
                                   info="A GGUF file, a transformers folder, a Hub repo id, or 'embedded' (SmolLM2-135M)")
                local = gr.Dropdown(choices=[], value=None, label="Local models", scale=2, elem_id="local-models",
                                    info="On disk: the models folder and the Hugging Face cache")
                local_refresh = gr.Button("↻", size="sm", scale=0, min_width=40, elem_id="local-refresh")
            gguf_file = gr.Textbox(value="", label="GGUF file (optional)", elem_id="gguf-file",
                                   placeholder="e.g. model-Q4_K_M.gguf",
                                   info="For a Hub repo holding several .gguf files: the one to download and load")
            with gr.Row():
                backend = gr.Dropdown(h.registry.names(), value=default_backend, label="Backend")
                quant = gr.Dropdown(h.registry.menu(default_backend),
                                    value=default_quant or h.registry.default_quantization(default_backend),
                                    label="Quantization", allow_custom_value=True)
            with gr.Accordion("Loader options", open=False, elem_id="loader-options"):
                loader = {}  # one control per declared loader option, three to a row
                for i in range(0, len(LOADER), 3):
                    with gr.Row():
                        for o in LOADER[i:i + 3]:
                            loader[o.name] = loader_control(o, getattr(spec, o.name))
            with gr.Accordion("Remote engine (backend: remote)", open=default_backend == "remote"):
                # Never the server's --api-base as the value: the API page (shown before login) would
                # carry it as the parameter's default. Empty = the server's --api-base.
                api_base = gr.Textbox(value="", label="Base URL",
                                      placeholder=("empty: the server's --api-base" if default_api_base else
                                                   "http://vllm-host:8000/v1 (vLLM, TGI, llama.cpp server)"))
                api_key = gr.Textbox(value="", label="API key", type="password", placeholder="optional")
            with gr.Row():
                load = gr.Button("Load", variant="primary", elem_id="load")
                unload = gr.Button("Unload", elem_id="unload")
            progress_text = gr.Textbox(label="Status", interactive=False, elem_id="load-status")
        with gr.Column(scale=2):
            current = gr.Markdown(describe(status), elem_id="model-current")
            with gr.Accordion("Details (JSON)", open=False, elem_id="model-details"):
                details = gr.JSON(value=status, label="Details")
    pooled = h.manager.pool is not None
    with gr.Accordion("Models by name" + (" (the pool)" if pooled else ""), open=pooled, elem_id="pool-box"):
        gr.Markdown("Every model this server serves by name: requests choose one by its `model` field (the chat's "
                    "model picker, /v1, the Gradio API). " + (
                        "A model not loaded is loaded on its first request." if pooled else
                        "Start the server with `--models-dir` to serve several models by name."))
        pool = gr.Dataframe(value=pool_table(model_rows(h.manager)), headers=POOL_HEADERS, interactive=False,
                            datatype=["str", "str", "number", "number", "str", "str"], wrap=True,
                            label="Servable models", elem_id="pool-table")
        with gr.Row():
            pool_pick = gr.Dropdown(choices=[r["id"] for r in model_rows(h.manager)], value=None, scale=3,
                                    label="Model", allow_custom_value=True, elem_id="pool-pick")
            pool_load = gr.Button("Load", elem_id="pool-load", interactive=pooled)
            pool_unload = gr.Button("Unload", elem_id="pool-unload")
        pool_status = gr.Textbox(show_label=False, interactive=False, elem_id="pool-status")
    with gr.Accordion("Downloaded and derived models", open=False) as cache_box:
        gr.Markdown("Hub downloads (Hugging Face cache) and the GGUF variants / checkpoints this app derived "
                    "(its cache dir). An interrupted download resumes when the model is loaded again.")
        cached = gr.Dataframe(value={"data": [], "headers": CACHE_HEADERS}, headers=CACHE_HEADERS,
                              datatype=["str", "str", "number", "number", "str", "str"], interactive=False, wrap=True,
                              label="Cached models", elem_id="cache-table")
        with gr.Row():
            cache_refresh = gr.Button("Refresh", elem_id="cache-refresh")
            cache_pick = gr.Dropdown(choices=[], value=None, label="Item to delete", allow_custom_value=True,
                                     elem_id="cache-pick", scale=3)
            cache_load = gr.Button("Load", elem_id="cache-load")
            cache_delete = gr.Button("Delete", variant="stop", elem_id="cache-delete")
        cache_status = gr.Textbox(label="", show_label=False, interactive=False, elem_id="cache-status")
        with gr.Row():
            convert_source = gr.Textbox(label="Checkpoint to convert to GGUF", elem_id="convert-source", scale=3,
                                        placeholder="a folder with config.json + *.safetensors, or a Hub repo id")
            gguf_types = [q for q in h.registry.menu("llamacpp") if q in GGUF_FTYPES and q != "F16"]
            convert_types = gr.Dropdown(gguf_types, value=["Q8_0", "Q4_K_M"], multiselect=True, scale=2,
                                        label="Also make (from the F16)", elem_id="convert-types")
            convert = gr.Button("Convert to GGUF", elem_id="convert")

    private = {"api_visibility": "private"}

    def on_backend(b):
        return gr.update(choices=h.registry.menu(b), value=h.registry.default_quantization(b))

    backend.input(on_backend, backend, quant, **private)

    option_inputs = [loader[o.name] for o in LOADER]

    def load_clicked(model, backend, quantization, api_base, api_key, gguf_file, *options):
        """The Load button: status lines in the Status box; a failed load leaves its reason there too
        (and in a toast)."""
        try:
            for fraction, text in load_steps(h, model, backend, quantization, api_base, api_key, gguf_file,
                                             **load_options(*options)):
                yield text if fraction >= 1.0 else f"{int(fraction * 100)}% · {text}"
        except Exception as exc:
            message = user_message(exc)
            yield f"Load failed: {message}"
            raise gr.Error(message, print_exception=False) from None

    @gradio_errors
    def unload_clicked() -> str:
        return h.unload_model()

    def refresh():
        s = h.model_status()
        rows = model_rows(h.manager)
        shown = (describe(s), s, pool_table(rows), gr.update(choices=[r["id"] for r in rows]))
        return (*shown, badge_text(s)) if badge is not None else shown

    @gradio_errors
    def pool_load_clicked(name: str) -> str:
        return h.load_by_name(name)

    @gradio_errors
    def pool_unload_clicked(name: str) -> str:
        if not (name or "").strip():
            raise gr.Error("Choose a model in the table to unload.")
        return h.unload_model(name)

    form = [model, backend, quant, gguf_file, *option_inputs]

    def fill_form():
        """The form shows what is loaded (not the defaults), read from model_status's options."""
        o = h.model_status().get("options")
        if not o:
            return [gr.skip()] * len(form)
        return [o["source"], o["backend"], gr.update(choices=h.registry.menu(o["backend"]), value=o["quantization"]),
                o["gguf_file"] or "", *(form_value(option, o[option.name]) for option in LOADER)]

    ev = load.click(load_clicked, [model, backend, quant, api_base, api_key, gguf_file, *option_inputs], progress_text,
                    concurrency_id="load", concurrency_limit=1, show_progress="hidden", **private)
    outputs = [current, details, pool, pool_pick] + ([badge] if badge is not None else [])
    ev.then(refresh, None, outputs, **private)
    uev = unload.click(unload_clicked, None, progress_text, concurrency_id="load", **private)
    uev.then(refresh, None, outputs, **private)

    def list_local():
        return gr.update(choices=h.local_models(models_dir))

    local_refresh.click(list_local, None, local, **private)
    local.focus(list_local, None, local, **private)
    local.input(lambda picked: picked or gr.skip(), local, model, **private)

    @gradio_errors
    def list_cache():
        items = h.cached_models()
        return cache_table(items), gr.update(choices=[i["id"] for i in items])

    @gradio_errors
    def delete_item(item_id: str) -> str:
        return h.delete_cached(item_id)

    @gradio_errors
    def load_item(item_id: str, progress=gr.Progress()):
        """Load one listed item (a GGUF variant as file, a derived checkpoint, a Hub repo) as the chat's model."""
        item = next((i for i in h.cached_models() if i["id"] == (item_id or "").strip()), None)
        if item is None:
            raise gr.Error("Choose an item from the list to load.")
        how = item.get("load") or ({"model": item["repo_id"], "backend": "llamacpp"} if item["id"].startswith("hub:")
                                   else None)
        if how is None:
            raise gr.Error(f"{item['id']} cannot be loaded (an unfinished conversion): delete it.")
        for fraction, line in h.load_steps(how["model"], how["backend"], how.get("quantization")):
            progress(fraction, desc=line)
            yield line

    def picked(evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else gr.skip()

    pool.select(picked, None, pool_pick, **private)
    pev = pool_load.click(pool_load_clicked, pool_pick, pool_status, concurrency_id="load", **private)
    pev.then(refresh, None, outputs, **private)
    puev = pool_unload.click(pool_unload_clicked, pool_pick, pool_status, concurrency_id="load", **private)
    puev.then(refresh, None, outputs, **private)

    def convert_clicked(source: str, types: list[str], progress=gr.Progress()):
        """llama.cpp's converter, then each type; the status line streams, the table lists the new rows."""
        try:
            for fraction, line, _rows in h.convert_to_gguf(source, types):
                progress(fraction, desc=line)
                yield line
        except Exception as exc:
            message = user_message(exc)
            yield f"Conversion failed: {message}"
            raise gr.Error(message, print_exception=False) from None

    cache_outputs = [cached, cache_pick]
    cev = convert.click(convert_clicked, [convert_source, convert_types], cache_status, concurrency_id="load", **private)
    cev.then(list_cache, None, cache_outputs, **private)
    cache_box.expand(list_cache, None, cache_outputs, **private)
    cache_refresh.click(list_cache, None, cache_outputs, **private)
    ev.then(list_cache, None, cache_outputs, **private)  # a load may have downloaded or derived
    cached.select(picked, None, cache_pick, **private)
    lev = cache_load.click(load_item, cache_pick, cache_status, concurrency_id="load", **private)
    lev.then(refresh, None, outputs, **private)
    dev = cache_delete.click(delete_item, cache_pick, cache_status, concurrency_id="load", **private)
    dev.then(list_cache, None, cache_outputs, **private)
    return refresh, outputs, fill_form, form
