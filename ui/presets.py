"""The built-in sampler presets: a name and the values of every sampler it sets.

A preset sets every sampler (``PRESET_FIELDS``: all the declared ones but max_new_tokens); what a
preset leaves out is at its neutral value (the value that changes nothing), so choosing one never
keeps part of the one before. The first three are this app's own; the others are
text-generation-webui's built-in presets with their published values (its ``presets/`` and
``user_data/presets/`` folders, github.com/oobabooga/text-generation-webui: the current Top-P,
Creative (here "Creative (XTC)", beside this app's own Creative), Instruct and min_p, the Qwen3
pair it shipped in 2025 and the Preset Arena winners of 2023 it kept until the end of 2024). Those
files list only what differs from text-generation-webui's neutral samplers (temperature 1, top_p 1,
top_k 0, ...), which are this app's neutral values too: here temperature is written out, and
``do_sample: false`` is temperature 0. Presets whose samplers no backend here has (tfs,
penalty_alpha) are left out.
"""

from __future__ import annotations

from serving.requests import CHAT_OPTIONS

# The presets' fields: every sampler a preset sets (the system prompt and max tokens are left alone).
PRESET_FIELDS = tuple(o.name for o in CHAT_OPTIONS if o.kind == "sampler" and o.name not in ("max_new_tokens",))
NEUTRAL = {o.name: o.neutral_value for o in CHAT_OPTIONS if o.name in PRESET_FIELDS and o.name != "temperature"}


def _preset(temperature: float = 1.0, **values) -> dict:
    unknown = set(values) - set(NEUTRAL)
    if unknown:
        raise ValueError(f"a preset names samplers that are not declared: {sorted(unknown)}")
    return {**NEUTRAL, "temperature": temperature, **values}


BUILTIN_PRESETS: dict[str, dict] = {
    # the most likely token every time: the same prompt gives the same reply
    "Deterministic": _preset(0.0),
    # the defaults: varied but on topic
    "Balanced": _preset(0.7, top_p=0.95, top_k=40),
    # more surprising word choices, with min_p keeping the tail sane
    "Creative": _preset(1.1, min_p=0.05),
    # text-generation-webui's (see the module docstring); Top-P is its default since 2026
    "Top-P": _preset(top_p=0.95),
    "Creative (XTC)": _preset(min_p=0.02, xtc_probability=0.5),  # XTC: llama.cpp only
    "Instruct": _preset(min_p=0.2),
    "min_p": _preset(min_p=0.05),
    "Qwen3 - Thinking": _preset(0.6, top_p=0.95, top_k=20),
    "Qwen3 - No Thinking": _preset(0.7, top_p=0.8, top_k=20),
    "simple-1": _preset(0.7, top_p=0.9, top_k=20, repetition_penalty=1.15),
    "LLaMA-Precise": _preset(0.7, top_p=0.1, top_k=40, repetition_penalty=1.18),
    "Divine Intellect": _preset(1.31, top_p=0.14, top_k=49, repetition_penalty=1.17),
    "Midnight Enigma": _preset(0.98, top_p=0.37, top_k=100, repetition_penalty=1.18),
    "Yara": _preset(0.82, top_p=0.21, top_k=72, repetition_penalty=1.19),
    "Shortwave": _preset(1.53, top_p=0.64, top_k=33, repetition_penalty=1.07),
    "Null preset": _preset(),
}
DEFAULT_PRESET = "Balanced"
