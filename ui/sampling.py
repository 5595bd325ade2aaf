"""The sampling column beside the chat: system prompt, the core samplers, the advanced ones in an
accordion, stop strings, the chat template's thinking switch, and presets (built in: ``ui/presets.py``;
more saved in the browser's localStorage). The Notebook makes its controls and its preset menu with
the same functions (``sampler_controls``, ``preset_menu``).

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
from ui.presets import BUILTIN_PRESETS, DEFAULT_PRESET, NEUTRAL, PRESET_FIELDS

PRESETS_KEY = "quantlab-presets"  # the localStorage key of the presets saved in this browser


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


def ui_order(options) -> list[Option]:
    """``options`` with each one that only tunes another placed right after it (DRY's settings after
    its multiplier), the others in declaration order."""
    names = {o.name for o in options}
    out: list[Option] = []
    for o in options:
        if o.tunes in names:
            continue
        out.append(o)
        out += [t for t in options if t.tunes == o.name]
    return out


def sampler_controls(options, defaults: dict | None = None, elem_id: str = "advanced-samplers",
                     elem_ids: dict | None = None) -> dict:
    """One control per declared sampler of ``options`` ({name: component}): the core ones first, the
    others in an "Advanced samplers" accordion (each tuning setting after the sampler it tunes);
    ``defaults``: start values that differ from the declarations'; ``elem_ids``: {name: elem_id}."""
    defaults, elem_ids = defaults or {}, elem_ids or {}
    s: dict = {}
    for o in options:
        if o.kind == "sampler" and o.core:
            s[o.name] = control(o, defaults.get(o.name, o.default), elem_ids.get(o.name))
    with gr.Accordion("Advanced samplers", open=False, elem_id=elem_id):
        gr.Markdown("A sampler the loaded backend cannot honour is refused by name; leave it at its "
                    "neutral value (shown) to switch it off.")
        for o in ui_order([o for o in options if o.kind == "sampler" and not o.core]):
            s[o.name] = control(o, defaults.get(o.name, o.default), elem_ids.get(o.name))
    return s


def preset_menu(elem_id: str = "preset", info: str = "", label: str = "Preset", **more) -> gr.Dropdown:
    """The preset menu: the built-in presets (the saved ones join on page load, ``restore_presets``)."""
    return gr.Dropdown(list(BUILTIN_PRESETS), value=DEFAULT_PRESET, label=label, allow_custom_value=True,
                       elem_id=elem_id, info=info or None, **more)


def wire_presets(menu: gr.Dropdown, fields: dict, saved: gr.BrowserState) -> None:
    """Choosing a preset in ``menu`` sets ``fields`` ({sampler name: component}, those of
    ``PRESET_FIELDS`` it has) from a built-in preset or one saved in this browser (``saved``)."""
    names = [n for n in PRESET_FIELDS if n in fields]

    def apply(name, saved_presets):
        values = preset_values(name, saved_presets)
        if values is None:
            return [gr.skip()] * len(names)
        return [values.get(n, NEUTRAL.get(n, 0.7)) for n in names]

    menu.input(apply, [menu, saved], [fields[n] for n in names], api_visibility="private", queue=False)


def build_sampling(max_new_default: int = 512) -> SamplingColumn:
    with gr.Row():
        preset = preset_menu(scale=3, info="Pick one, or type a name and Save")
    with gr.Row():
        save = gr.Button("Save preset", size="sm", elem_id="preset-save")
        delete = gr.Button("Delete preset", size="sm", elem_id="preset-delete")
    system = gr.Textbox(label="System prompt", lines=3, placeholder="You are a helpful assistant.")
    s = sampler_controls(CHAT_OPTIONS, {"max_new_tokens": max_new_default})
    for o in CHAT_OPTIONS:  # the request options (stop, thinking)
        if o.kind != "sampler":
            s[o.name] = control(o, o.default)
    saved = gr.BrowserState({}, storage_key=PRESETS_KEY)
    wire_presets(preset, s, saved)

    fields = [s[name] for name in PRESET_FIELDS]

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
    save.click(do_save, [preset, saved, *fields], [saved, preset], **private)
    delete.click(do_delete, [preset, saved], [saved, preset], **private)
    params = [system, *(s[o.name] for o in CHAT_OPTIONS)]
    return SamplingColumn(system, s["max_new_tokens"], s["temperature"], s, s["stop"], s["enable_thinking"], preset,
                          saved, params)


def control(o: Option, value, elem_id: str | None = None):
    """The UI control of a declared option: a radio for a few choices, a text box for text, a number
    box for an unbounded number, else a slider over its UI range."""
    elem_id = elem_id or o.elem_id or None
    if o.choices:
        return gr.Radio(list(o.choices), value=value, label=o.label, elem_id=elem_id)
    if o.type is str:
        return gr.Textbox(value=value, label=o.label, lines=1 if o.kind == "sampler" else 2,
                          placeholder=o.hint or None, elem_id=elem_id)
    if not o.ui:
        return gr.Number(value=value, precision=0 if o.type is int else None, label=o.label, elem_id=elem_id)
    low, high, step = o.ui
    return gr.Slider(low, high, value=value, step=step, label=o.label, elem_id=elem_id)


def restore_presets(saved: dict | None):
    """A page-load handler: the preset menu with the ones saved in this browser."""
    return gr.update(choices=preset_choices(saved))
