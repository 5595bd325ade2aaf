"""The Notebook section: free-form text continuation without the chat template (what a base model
is for, and how text-generation-webui's Notebook works). The continuation streams into the same
box, after the prompt; Stop keeps what came.

Beside the text: the presets (the chat's, ``ui/presets.py``, and the ones saved in this browser)
and a control for every sampler the loaded backend has, made from the declarations as the chat's
are (``ui.sampling.sampler_controls``; /complete's parameters, ``serving.requests.COMPLETE_OPTIONS``).
Under it: a live count of the text's tokens, and after a run, finished or stopped, its counts
(prompt and generated tokens, tok/s): Stop reads the stopped request's own figures.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import gradio as gr

from backends.base import MAX_NEW_TOKENS_LIMIT
from serving.chat_service import Turn
from serving.requests import COMPLETE_OPTIONS
from serving.services import Services
from serving.zerogpu import gpu_task
from ui.edge import client_of, gradio_errors
from ui.presets import PRESET_FIELDS
from ui.sampling import PRESETS_KEY, control, preset_choices, preset_menu, sampler_controls, wire_presets

PLACEHOLDER = "Once upon a time, in a village by the sea,"
MAX_NEW_DEFAULT = 200


@dataclass
class NotebookSection:
    text: gr.Textbox
    generate: gr.Button
    stop: gr.Button
    counts: gr.Markdown
    params: list  # /complete's order after the prompt (COMPLETE_OPTIONS)
    preset: gr.Dropdown
    saved_presets: gr.BrowserState
    samplers: dict  # name -> control

    def wire_load(self, blocks: gr.Blocks, h: Services, tab: gr.Tab) -> None:
        """On page load: the presets saved in this browser join the menu; on page load and whenever
        the tab is opened, only the samplers the loaded backend has are shown."""
        blocks.load(lambda saved: gr.update(choices=preset_choices(saved)), self.saved_presets, self.preset,
                    api_visibility="private", queue=False)
        optional = [name for name in self.samplers if name in ADVANCED]
        show = lambda: [gr.update(visible=v) for v in visible_samplers(h, optional)]  # noqa: E731
        outputs = [self.samplers[n] for n in optional]
        blocks.load(show, None, outputs, api_visibility="private", queue=False)
        tab.select(show, None, outputs, api_visibility="private", queue=False)


ADVANCED = {o.name for o in COMPLETE_OPTIONS if o.kind == "sampler" and not o.core}


def visible_samplers(h: Services, names: list[str]) -> list[bool]:
    """For each sampler of ``names``: whether the loaded backend has it (one that only tunes another
    goes with it); all of them when nothing is loaded."""
    from backends.options import BY_NAME

    current = h.manager.current
    if current is None:
        return [True] * len(names)
    try:
        has = h.registry.get(current.backend).samplers
    except Exception:  # an unknown backend name: show everything rather than nothing
        return [True] * len(names)
    return [(BY_NAME[n].tunes or n) in has for n in names]


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


def format_text_tokens(n: int | None) -> str:
    return "" if n is None else f"{n} token{'s' if n != 1 else ''} in the text"


@dataclass(eq=False)
class NotebookRun:
    """One running continuation, as Stop finds it: the stream (through ``turn``), whether Stop came,
    and when the generator is over (its stats are final then)."""

    turn: Turn = field(default_factory=Turn)
    stopped: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class NotebookRuns:
    """The running continuation of each browser session (the latest few hundred)."""

    MAX = 256

    def __init__(self) -> None:
        self._runs: OrderedDict[str, NotebookRun] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, session: str | None) -> NotebookRun:
        run = NotebookRun()
        with self._lock:
            self._runs[session or ""] = run
            self._runs.move_to_end(session or "")
            while len(self._runs) > self.MAX:
                self._runs.popitem(last=False)
        return run

    def get(self, session: str | None) -> NotebookRun | None:
        with self._lock:
            return self._runs.get(session or "")


def stopped_counts(run: NotebookRun | None) -> str | None:
    """The counts line of a stopped run (None: nothing was generating)."""
    if run is None:
        return None
    run.stopped = True
    run.done.wait(5.0)  # the generator ends within a token of the flag or of Gradio's cancel
    stream = run.turn.stream
    if stream is None:
        return None
    stats = stream.stats.as_dict()
    stats["finish_reason"] = "stopped"
    return format_counts(stats)


def build_notebook(h: Services, slots: int = 1) -> NotebookSection:
    with gr.Row():
        with gr.Column(scale=4):
            text = gr.Textbox(label="Text", lines=16, max_lines=60, placeholder=PLACEHOLDER, elem_id="notebook-text",
                              buttons=["copy"], info="Sent to the model as is (no chat template); the continuation "
                                                      "is appended here")
            text_tokens = gr.Markdown(elem_id="notebook-tokens")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="notebook-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="notebook-stop")
                undo = gr.Button("Undo", elem_id="notebook-undo")
            counts = gr.Markdown(elem_id="notebook-counts")
        with gr.Column(scale=2, min_width=260):
            preset = preset_menu(elem_id="notebook-preset", label="Sampler preset",
                                 info="Sets the samplers below (the chat's presets)")
            samplers = sampler_controls([o for o in COMPLETE_OPTIONS if o.kind == "sampler"],
                                        {"max_new_tokens": min(MAX_NEW_DEFAULT, MAX_NEW_TOKENS_LIMIT)},
                                        elem_id="notebook-advanced",
                                        elem_ids={"max_new_tokens": "notebook-max-new",
                                                  "temperature": "notebook-temperature"})
            samplers["stop"] = control(next(o for o in COMPLETE_OPTIONS if o.name == "stop"), "", "notebook-stop-at")
    saved = gr.BrowserState({}, storage_key=PRESETS_KEY)  # the chat's saved presets (read here, never written)
    wire_presets(preset, {n: samplers[n] for n in PRESET_FIELDS if n in samplers}, saved)
    params = [samplers[o.name] for o in COMPLETE_OPTIONS]
    before = gr.State("")  # the text before the last Generate, for Undo
    runs = NotebookRuns()

    def count_tokens(prompt):
        if not prompt or h.manager.current is None:
            return ""
        try:
            return format_text_tokens(len(h.manager.tokenize(prompt)))
        except Exception:  # a backend that cannot tokenize, or a model being swapped: no count
            return ""

    @gpu_task
    @gradio_errors
    def continue_text(request: gr.Request, prompt, *params):  # request first: Gradio injects it by position
        run = runs.start(getattr(request, "session_hash", None))
        continuation = ""
        pieces = h.complete_pieces(prompt, *params, endpoint="ui", client=client_of(request), turn=run.turn)
        try:
            for piece in pieces:
                if run.stopped:  # Stop: end here, even if Gradio has not closed us yet
                    break
                continuation += piece.text
                yield prompt + continuation, format_counts(piece.stats) if piece.stats else gr.skip()
        finally:
            pieces.close()
            run.done.set()

    def stop_run(request: gr.Request):
        line = stopped_counts(runs.get(getattr(request, "session_hash", None)))
        return gr.skip() if line is None else line

    private = {"api_visibility": "private"}
    live = {"api_visibility": "private", "concurrency_limit": None, "trigger_mode": "always_last",
            "show_progress": "hidden"}
    text.input(count_tokens, text, text_tokens, **live)
    remember = generate.click(lambda t: t, text, before, queue=False, **private)
    ev = remember.then(continue_text, [text, *params], [text, counts], concurrency_id="generate",
                       concurrency_limit=slots, show_progress="minimal", **private)
    ev.then(count_tokens, text, text_tokens, **live)
    stop.click(stop_run, None, counts, cancels=[ev], **private, concurrency_limit=None).then(
        count_tokens, text, text_tokens, **live)
    undo.click(lambda b: b or gr.skip(), before, text, cancels=[ev], queue=False, **private).then(
        count_tokens, text, text_tokens, **live)
    return NotebookSection(text, generate, stop, counts, params, preset, saved, samplers)
