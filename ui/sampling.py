"""The sampling column beside the chat: system prompt, the core samplers, the advanced ones in an
accordion, stop strings, the chat template's thinking switch, and presets (three built in, more
saved in the browser's localStorage).

``SamplingColumn.params`` lists the components in /chat's parameter order after (message,
history): system_prompt, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, then
serving.chat_service.EXTRA_CHAT_PARAMS' samplers, stop, enable_thinking. Handlers take them
positionally in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backends.base import MAX_NEW_TOKENS_LIMIT
from serving.chat_service import EXTRA_CHAT_PARAMS, THINKING_CHOICES

# The presets' fields: every sampler a preset sets (the system prompt and max tokens are left alone).
PRESET_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "seed",
                 *(name for name, _ in EXTRA_CHAT_PARAMS))
NEUTRAL = {"top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0, "seed": -1, **dict(EXTRA_CHAT_PARAMS)}
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
    samplers: dict  # name -> component, for every PRESET_FIELDS entry
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
    max_new = gr.Slider(1, min(MAX_NEW_TOKENS_LIMIT, 8192), value=max_new_default, step=1, label="Max new tokens")
    s: dict = {}
    s["temperature"] = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
    s["top_p"] = gr.Slider(0.01, 1, value=0.95, step=0.01, label="Top p")
    s["top_k"] = gr.Slider(0, 200, value=40, step=1, label="Top k (0 = off)")
    s["repetition_penalty"] = gr.Slider(0.8, 2, value=1.0, step=0.01, label="Repetition penalty")
    s["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
    with gr.Accordion("Advanced samplers", open=False, elem_id="advanced-samplers"):
        gr.Markdown("A sampler the loaded backend cannot honour is refused by name; leave it at its "
                    "neutral value (shown) to switch it off.")
        s["min_p"] = gr.Slider(0, 1, value=0.0, step=0.01, label="Min p (0 = off)")
        s["typical_p"] = gr.Slider(0.01, 1, value=1.0, step=0.01, label="Typical p (1 = off)")
        s["presence_penalty"] = gr.Slider(-2, 2, value=0.0, step=0.05, label="Presence penalty")
        s["frequency_penalty"] = gr.Slider(-2, 2, value=0.0, step=0.05, label="Frequency penalty")
        s["dry_multiplier"] = gr.Slider(0, 5, value=0.0, step=0.05, label="DRY multiplier (0 = off)")
        s["xtc_probability"] = gr.Slider(0, 1, value=0.0, step=0.01, label="XTC probability (0 = off)")
        s["xtc_threshold"] = gr.Slider(0, 1, value=0.1, step=0.01, label="XTC threshold")
        s["mirostat"] = gr.Radio([0, 1, 2], value=0, label="Mirostat (0 = off)")
        s["mirostat_tau"] = gr.Slider(0, 10, value=5.0, step=0.1, label="Mirostat tau")
        s["mirostat_eta"] = gr.Slider(0, 1, value=0.1, step=0.01, label="Mirostat eta")
        s["no_repeat_ngram_size"] = gr.Slider(0, 20, value=0, step=1, label="No-repeat n-gram size (0 = off)")
    stop = gr.Textbox(label="Stop strings", lines=2, placeholder="one per line", elem_id="stop-strings")
    thinking = gr.Radio(list(THINKING_CHOICES), value="auto", label="Thinking (chat templates that have it)")
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
    params = [system, max_new, *(s[n] for n in ("temperature", "top_p", "top_k", "repetition_penalty", "seed")),
              *(s[name] for name, _ in EXTRA_CHAT_PARAMS), stop, thinking]
    return SamplingColumn(system, max_new, s["temperature"], s, stop, thinking, preset, saved, params)


def restore_presets(saved: dict | None):
    """A page-load handler: the preset menu with the ones saved in this browser."""
    return gr.update(choices=preset_choices(saved))
