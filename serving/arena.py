"""The blind arena's operations, as the UI and the Gradio API call them: play a round (two contenders
answer one prompt through the lab, optionally scored against a reference), vote on it, read and
export the results. The rounds and votes themselves are kept by ``optimization/arena.py``.

A contender is a lab variant ("llamacpp:Q4_K_M") of the round's model, or, written
"MODEL | backend:quantization", a variant of another model (two models of the pool against each other).
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Any

from backends.errors import Cancelled, InvalidRequest
from backends.files.sources import default_cache_dir
from optimization.arena import ArenaStore, arena_dir
from optimization.lab import Variant
from optimization.token_divergence import compare_divergence
from serving.requests import as_text
from serving.services import Services

MODEL_MARK = "|"


def store(h: Services) -> ArenaStore:
    """The server's arena, under its cache dir (every store over it agrees: it is all on disk)."""
    return ArenaStore(arena_dir(h.manager.cache_dir or default_cache_dir()))


def parse_contender(text: Any, default_model: str, h: Services) -> tuple[str, str, str]:
    """(model source, variant label, shown name): "llamacpp:Q8_0" (of ``default_model``) or
    "MODEL | llamacpp:Q8_0". The name is the variant's label, prefixed by its model when that is not
    ``default_model``."""
    raw = as_text(text, "contenders").strip()
    model, sep, variant = raw.rpartition(MODEL_MARK)
    model = model.strip() if sep else default_model
    label = Variant.parse(variant.strip(), h.registry).label
    return model, label, label if model == default_model else f"{Path(model).name or model} {MODEL_MARK} {label}"


def pick_pair(contenders: Any, h: Services, model: str, rng: secrets.SystemRandom) -> list[tuple[str, str, str]]:
    """Two different contenders: the two given, or two drawn at random from three or more."""
    if isinstance(contenders, str):
        contenders = [c for c in contenders.split(",") if c.strip()]
    if not isinstance(contenders, (list, tuple)):
        raise InvalidRequest('contenders must be a list such as ["llamacpp:Q8_0", "llamacpp:Q2_K"].', "contenders")
    parsed = list(dict.fromkeys(parse_contender(c, model, h) for c in contenders))
    if len(parsed) < 2:
        raise InvalidRequest("Choose two different contenders (or more: each round draws two).", "contenders")
    return rng.sample(parsed, 2)


def _answer(h: Services, prompt: str, model: str, variant: str, max_new_tokens, temperature, seed) -> dict:
    """One contender's reply through Compare's path (slots, timing, pooled variants)."""
    *_, last = h.compare(prompt, [variant], model, max_new_tokens, temperature, seed)
    return last[0]


def play_round(h: Services, prompt: Any, contenders: Any, model: Any = "embedded", max_new_tokens: Any = 128,
               temperature: Any = 0.7, seed: Any = -1, reference: Any = "",
               cancel: threading.Event | None = None) -> dict:
    """Both replies, kept as a round waiting for its vote; returns only what a blind vote may see:
    {round, prompt, A: {text, finish_reason}, B: {...}}. With a ``reference`` ("backend:quantization",
    two variants of one model), each reply's mean KLD against it is kept for the reveal."""
    rng = secrets.SystemRandom()
    model = as_text(model, "model").strip() or "embedded"
    prompt = as_text(prompt, "prompt")
    reference = as_text(reference, "reference").strip()
    pair = pick_pair(contenders, h, model, rng)
    if seed is None or (isinstance(seed, (int, float)) and seed < 0):
        seed = rng.randrange(2**31)
    sides = []
    for source, variant, name in pair:
        if cancel is not None and cancel.is_set():
            raise Cancelled("The round was stopped.")
        pane = _answer(h, prompt, source, variant, max_new_tokens, temperature, seed)
        stats = pane.get("stats") or {}
        figures = {"memory_mib": pane.get("footprint_mib"), "tokens_per_s": stats.get("tokens_per_s"),
                   "completion_tokens": stats.get("completion_tokens"), "kld_mean": None}
        if reference and pane.get("text"):
            [d] = compare_divergence(h.lab, source, prompt, [pane], reference, cancel=cancel)
            figures.update(kld_mean=d["kld_mean"], kld_reference=d["reference"])
        sides.append({"name": name, "model": source, "variant": variant, "text": pane["text"],
                      "finish_reason": pane.get("finish_reason"), "figures": figures})
    return store(h).open_round(prompt, sides[0], sides[1], rng)


def vote(h: Services, round_id: Any, choice: Any) -> dict:
    """Record the vote and reveal the round (names, figures, the pair's results so far)."""
    return store(h).vote(as_text(round_id, "round"), as_text(choice, "vote"))


def results(h: Services) -> list[dict]:
    return store(h).results()
