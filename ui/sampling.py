"""The sampling column beside the chat: system prompt, the core samplers, the advanced ones in an
accordion, stop strings, the chat template's thinking switch, and presets (three built in, more
saved in the browser's localStorage).

``SamplingColumn.params`` lists the components in /chat's parameter order after (message,
history): system_prompt, then one control per declared option (``serving.requests.CHAT_OPTIONS``:
max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, the other samplers, stop,
enable_thinking), each made from its declaration (``control``). Handlers take them positionally in
that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backends.options import Option
from serving.requests import CHAT_OPTIONS

# The presets' fields: every sampler a preset sets (the system prompt and max tokens are left alone).
PRESET_FIELDS = tuple(o.name for o in CHAT_OPTIONS if o.kind == "sampler" and o.name not in ("max_new_tokens",))
NEUTRAL = {o.name: o.neutral_value for o in CHAT_OPTIONS if o.name in PRESET_FIELDS and o.name != "temperature"}
BUILTIN_PRESETS: dict[str, dict] = {
    # the most likely token every time: the same prompt gives the same reply
    "Deterministic": {**NEUTRAL, "temperature": 0.0},
    # the defaults: varied but on topic
    "Balanced": {**NEUTRAL, "temperature": 0.7, "top_p": 0.95, "top_k": 40},
    # more surprising word choices, with min_p keeping the tail sane
    "Creative": {**NEUTRAL, "temperature": 1.1, "top_p": 1.0, "top_k": 0, "min_p": 0.05},
}
DEFAULT_PRESET = "Balanced"


@dataclass
class SamplingColumn:
    system: gr.Textbox
    max_new: gr.Slider
    temperature: gr.Slider
    samplers: dict  # name -> component, for every CHAT_OPTIONS entry
    stop: gr.Textbox
    thinking: gr.Radio
    preset: gr.Dropdown
    saved_presets: gr.BrowserState
    params: list  # in /chat's order after (message, history)


def preset_choices(saved: dict | None) -> list[str]:
    return list(BUILTIN_PRESETS) + sorted(n for n in (saved or {}) if n not in BUILTIN_PRESETS)


def preset_values(name: str, saved: dict | None) -> dict | None:
    """A preset's sampler values by name (a built-in, else a saved one), None if unknown."""
    if name in BUILTIN_PRESETS:
        return BUILTIN_PRESETS[name]
    values = (saved or {}).get(name)
    return values if isinstance(values, dict) else None


def save_preset(name: str, saved: dict | None, values: dict) -> dict:
    """``saved`` with ``values`` stored under ``name``; a built-in's name is refused."""
    name = (name or "").strip()
    if not name:
        raise gr.Error("Name the preset first: type a name in the Preset box.")
    if name in BUILTIN_PRESETS:
        raise gr.Error(f"{name!r} is a built-in preset: save yours under another name.")
    if len(name) > 60:
        raise gr.Error("A preset name may be at most 60 characters.")
    return {**(saved or {}), name: {k: values[k] for k in PRESET_FIELDS}}


def build_sampling(max_new_default: int = 512) -> SamplingColumn:
    with gr.Row():
        preset = gr.Dropdown(list(BUILTIN_PRESETS), value=DEFAULT_PRESET, label="Preset", allow_custom_value=True,
                             elem_id="preset", scale=3, info="Pick one, or type a name and Save")
    with gr.Row():
        save = gr.Button("Save preset", size="sm", elem_id="preset-save")
        delete = gr.Button("Delete", size="sm", elem_id="preset-delete")
    system = gr.Textbox(label="System prompt", lines=3, placeholder="You are a helpful assistant.")
    s: dict = {}  # the core samplers, the others in an accordion, then the request options (stop, thinking)
    for o in CHAT_OPTIONS:
        if o.core:
            s[o.name] = control(o, max_new_default if o.name == "max_new_tokens" else o.default)
    with gr.Accordion("Advanced samplers", open=False, elem_id="advanced-samplers"):
        gr.Markdown("A sampler the loaded backend cannot honour is refused by name; leave it at its "
                    "neutral value (shown) to switch it off.")
        for o in CHAT_OPTIONS:
            if o.kind == "sampler" and not o.core:
                s[o.name] = control(o, o.default)
    for o in CHAT_OPTIONS:
        if o.kind != "sampler":
            s[o.name] = control(o, o.default)
    saved = gr.BrowserState({}, storage_key="quantlab-presets")

    fields = [s[name] for name in PRESET_FIELDS]

    def apply(name, saved_presets):
        values = preset_values(name, saved_presets)
        if values is None:
            return [gr.skip()] * len(fields)
        return [values.get(n, NEUTRAL.get(n, 0.7)) for n in PRESET_FIELDS]

    def do_save(name, saved_presets, *values):
        saved_presets = save_preset(name, saved_presets, dict(zip(PRESET_FIELDS, values, strict=True)))
        gr.Info(f"Saved preset {name.strip()!r} in this browser.")
        return saved_presets, gr.update(choices=preset_choices(saved_presets), value=name.strip())

    def do_delete(name, saved_presets):
        saved_presets = dict(saved_presets or {})
        if name in BUILTIN_PRESETS:
            raise gr.Error(f"{name!r} is built in and cannot be deleted.")
        if saved_presets.pop(name, None) is None:
            raise gr.Error(f"There is no saved preset called {name!r}.")
        return saved_presets, gr.update(choices=preset_choices(saved_presets), value=DEFAULT_PRESET)

    private = {"api_visibility": "private", "queue": False}
    preset.input(apply, [preset, saved], fields, **private)
    save.click(do_save, [preset, saved, *fields], [saved, preset], **private)
    delete.click(do_delete, [preset, saved], [saved, preset], **private)
    params = [system, *(s[o.name] for o in CHAT_OPTIONS)]
    return SamplingColumn(system, s["max_new_tokens"], s["temperature"], s, s["stop"], s["enable_thinking"], preset,
                          saved, params)


def control(o: Option, value):
    """The UI control of a declared option: a radio for a few choices, a text box for text, a number
    box for an unbounded number, else a slider over its UI range."""
    if o.choices:
        return gr.Radio(list(o.choices), value=value, label=o.label)
    if o.type is str:
        return gr.Textbox(value=value, label=o.label, lines=2, placeholder=o.hint or None, elem_id=o.elem_id or None)
    if not o.ui:
        return gr.Number(value=value, precision=0 if o.type is int else None, label=o.label)
    low, high, step = o.ui
    return gr.Slider(low, high, value=value, step=step, label=o.label)


def restore_presets(saved: dict | None):
    """A page-load handler: the preset menu with the ones saved in this browser."""
    return gr.update(choices=preset_choices(saved))
