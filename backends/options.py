"""Every sampler, request and loader option, declared once.

An ``Option`` says what a parameter is (name, type, bounds, default, the value that changes nothing,
its one-line description) and where it shows (the Gradio API and the UI, /v1). Everything else is
generated from these declarations: ``SamplingParams``' fields and its bounds check
(``backends/base.py``), the Gradio /chat, /complete and /load_model parameters and their API
descriptions (``ui/endpoints.py``), the UI's sampling and loader controls (``ui/sampling.py``,
``ui/model.py``), the /v1 extension fields (``serving/openai_schema.py``), the coercion of user input
(``serving/requests.py``) and the "this backend lacks X" refusal (``Backend.check_request``, which
reads the ``samplers`` each backend class declares beside its capabilities).

Adding a sampler: declare it in ``SAMPLING`` (at the end: the Gradio API's parameter order is the
declaration order, and positional gradio_client calls must keep working), name it in the
``samplers`` of each backend that implements it, and implement it there. Nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

_SAME = object()


@dataclass(frozen=True)
class Option:
    """One parameter of a generation or a load.

    ``kind``: "sampler" (a ``SamplingParams`` field), "request" (a ``ChatRequest`` field every backend
    honours: stop strings, the template's thinking switch) or "loader" (a ``ModelSpec`` field).
    ``default``: what a request that leaves it out gets (a loader option: ModelSpec's default);
    ``neutral``: the value that changes nothing (default: ``default``): a sampler set away from it on a
    backend that does not declare it is refused by name. ``core`` samplers every backend honours;
    ``tunes`` names the sampler this one only adjusts (never refused alone). Bounds are inclusive,
    ``low_open`` excludes ``low``; ``choices`` are the accepted values (``free``: suggestions only).
    ``gradio``: a Gradio API parameter and a UI control; ``v1``: a /v1 extension field (the core ones
    have OpenAI's own). ``unset``: a loader option's API value meaning "the server's default".
    ``label``, ``info``, ``ui`` (slider low, high, step), ``hint`` and ``elem_id`` shape the UI control."""

    name: str
    type: type
    default: Any
    description: str
    kind: str = "sampler"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    free: bool = False
    optional: bool = False  # None is a value (the backend or the server picks)
    neutral: Any = _SAME
    core: bool = False
    tunes: str | None = None
    gradio: bool = True
    v1: bool = True
    unset: Any = None
    parse: Callable[[Any], Any] | None = None  # a loader option's own coercion (the text "auto", ...)
    label: str = ""
    info: str = ""
    hint: str = ""
    ui: tuple = ()
    elem_id: str = ""
    v1_type: Any = None  # its /v1 field's (a loader option: API parameter's) type when wider than ``type``

    @property
    def neutral_value(self) -> Any:
        return self.default if self.neutral is _SAME else self.neutral

    @property
    def annotation(self) -> Any:
        """The Python type hint of its API parameter (Gradio builds the parameter's schema from it): a
        loader option whose "server's default" is None takes None too; one with a wider ``v1_type`` takes
        that (flash_attn: "auto"/"on"/"off" or the older true/false)."""
        if self.kind == "loader" and self.v1_type is not None:
            return self.v1_type
        return self.type | None if self.kind == "loader" and self.unset is None else self.type

    def bounds_text(self) -> str:
        lo = f"({self.low}" if self.low_open else f"between {self.low}"
        if self.high is None:
            return f"greater than {self.low}" if self.low_open else f"at least {self.low}"
        return f"in {lo}, {self.high}]" if self.low_open else f"{lo} and {self.high}"

    def out_of_bounds(self, value: Any) -> str | None:
        """Why ``value`` (already of ``type``) is refused, or None when it is accepted."""
        if self.choices and not self.free and value not in self.choices:
            return f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}."
        if self.low is None or value is None:
            return None
        if value < self.low or (self.low_open and value == self.low) or (self.high is not None and value > self.high):
            return f"{self.name} must be {self.bounds_text()}, got {value}."
        return None


DRY_DEFAULT_BREAKERS = ("\n", ":", "\"", "*")  # llama.cpp's (and text-generation-webui's) DRY sequence breakers
MAX_BREAKERS, MAX_BREAKER_CHARS = 32, 40  # llama.cpp's DRY reads a breaker's first 40 characters


def parse_breakers(value: Any) -> str:
    """DRY sequence breakers as the canonical text a SamplingParams holds: "" (llama.cpp's default
    ones) or a JSON array of strings. Takes a list of strings (the /v1 field, as llama-server's), a
    JSON array, or JSON strings separated by commas (text-generation-webui's form); InvalidRequest
    naming dry_sequence_breakers otherwise."""
    import json

    from backends.errors import InvalidRequest

    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    items = value
    if isinstance(value, str):
        text = value.strip()
        try:
            items = json.loads(text if text.startswith("[") else f"[{text}]")
        except ValueError as exc:
            raise InvalidRequest('dry_sequence_breakers must be JSON strings separated by commas, e.g. "\\n", ":" '
                                 f'(or a JSON array of strings): {exc}', "dry_sequence_breakers") from exc
    if not isinstance(items, (list, tuple)) or not all(isinstance(b, str) and b for b in items):
        raise InvalidRequest("dry_sequence_breakers must be a list of non-empty strings.", "dry_sequence_breakers")
    if len(items) > MAX_BREAKERS or any(len(b) > MAX_BREAKER_CHARS for b in items):
        raise InvalidRequest(f"dry_sequence_breakers takes at most {MAX_BREAKERS} strings of at most "
                             f"{MAX_BREAKER_CHARS} characters each.", "dry_sequence_breakers")
    return json.dumps(list(items))


def sequence_breakers(text: str) -> tuple[str, ...]:
    """The breakers of a canonical ``parse_breakers`` text ("" = the default ones)."""
    import json

    return tuple(json.loads(text)) if text else DRY_DEFAULT_BREAKERS


def _sampler(name: str, type_: type, default: Any, description: str, low: float, high: float, label: str,
             step: float, ui: tuple = (), **more: Any) -> Option:
    return Option(name, type_, default, description, low=low, high=high, label=label,
                  ui=(*(ui or (low, high)), step), **more)


# The generation options, in the Gradio /chat API's order after (message, history, system_prompt);
# the samplers among them are SamplingParams' fields, in this order. New ones go at the END.
SAMPLING: tuple[Option, ...] = (
    _sampler("max_new_tokens", int, 512, "longest reply, in tokens", 1, 32768, "Max new tokens", 1, ui=(1, 8192), core=True, v1=False),
    _sampler("temperature", float, 0.7, "sampling temperature; 0 = greedy (always the most likely token)", 0.0,
             5.0, "Temperature (0 = greedy)", 0.05, ui=(0, 2), core=True, v1=False),
    _sampler("top_p", float, 0.95, "nucleus sampling: keep the most likely tokens up to this total probability "
             "(1 = off)", 0.0, 1.0, "Top p", 0.01, ui=(0.01, 1), low_open=True, neutral=1.0, core=True, v1=False),
    Option("top_k", int, 40, "keep only the k most likely tokens (0 = off)", low=0, neutral=0, core=True, v1=False,
           label="Top k (0 = off)", ui=(0, 200, 1)),
    _sampler("repetition_penalty", float, 1.0, "divide the scores of tokens already present (1 = off)", 0.0,
             5.0, "Repetition penalty", 0.01, ui=(0.8, 2), low_open=True, core=True, v1=False),
    Option("seed", int, -1, "sampling seed for a repeatable reply (-1 = random)", optional=True, core=True,
           v1=False, label="Seed (-1 = random)"),
    _sampler("min_p", float, 0.0, "drop tokens less likely than min_p times the top token's probability "
             "(0 = off; 1 = greedy)", 0.0, 1.0, "Min p (0 = off)", 0.01),
    _sampler("typical_p", float, 1.0, "locally typical sampling (1 = off)", 0.0, 1.0, "Typical p (1 = off)", 0.01,
             ui=(0.01, 1), low_open=True),
    _sampler("presence_penalty", float, 0.0, "subtract this once from every token already present (OpenAI's; "
             "0 = off)", -2.0, 2.0, "Presence penalty", 0.05),
    _sampler("frequency_penalty", float, 0.0, "subtract this per occurrence of a token already present (OpenAI's; "
             "0 = off)", -2.0, 2.0, "Frequency penalty", 0.05),
    _sampler("dry_multiplier", float, 0.0, "DRY penalty on repeated sequences (llama.cpp; 0 = off)", 0.0, 100.0,
             "DRY multiplier (0 = off)", 0.05, ui=(0, 5)),
    _sampler("xtc_probability", float, 0.0, "XTC: chance of excluding the top choices (llama.cpp; 0 = off)",
             0.0, 1.0, "XTC probability (0 = off)", 0.01),
    _sampler("xtc_threshold", float, 0.1, "XTC: tokens above this probability count as top choices", 0.0, 1.0,
             "XTC threshold", 0.01, tunes="xtc_probability"),
    Option("mirostat", int, 0, "Mirostat mode, 0 = off, 1 or 2 (llama.cpp; replaces top-k/top-p)", low=0, high=2,
           choices=(0, 1, 2), label="Mirostat (0 = off)"),
    _sampler("mirostat_tau", float, 5.0, "Mirostat target surprise", 0.0, 100.0, "Mirostat tau", 0.1, ui=(0, 10),
             tunes="mirostat"),
    _sampler("mirostat_eta", float, 0.1, "Mirostat learning rate", 0.0, 1.0, "Mirostat eta", 0.01, tunes="mirostat"),
    _sampler("no_repeat_ngram_size", int, 0, "never repeat an n-gram of this size (transformers; 0 = off)", 0, 1024,
             "No-repeat n-gram size (0 = off)", 1, ui=(0, 20)),
    Option("stop", str, "", "stop strings, one per line: the reply ends before the first one", kind="request",
           v1=False, label="Stop strings", hint="one per line", elem_id="stop-strings"),
    Option("enable_thinking", str, "auto", 'the chat template\'s enable_thinking: "auto" (the template\'s default), '
           '"on" or "off"', kind="request", choices=("auto", "on", "off"), v1=False,
           label="Thinking (chat templates that have it)"),
    # DRY's own settings (llama.cpp's dry_base, dry_allowed_length, dry_penalty_last_n,
    # dry_sequence_breakers; text-generation-webui's names and defaults): they only tune dry_multiplier
    _sampler("dry_base", float, 1.75, "DRY: base of the penalty's growth with the repeat's length", 1.0, 100.0,
             "DRY base", 0.05, ui=(1, 4), tunes="dry_multiplier"),
    _sampler("dry_allowed_length", int, 2, "DRY: repeats up to this many tokens long are not penalised", 0, 1024,
             "DRY allowed length", 1, ui=(0, 20), tunes="dry_multiplier"),
    _sampler("dry_penalty_last_n", int, -1, "DRY: tokens looked back over (-1 = the whole context, 0 = off)", -1,
             1 << 20, "DRY range (-1 = whole context)", 1, ui=(-1, 8192), tunes="dry_multiplier"),
    Option("dry_sequence_breakers", str, "", "DRY: strings a repeat does not continue across, as JSON strings "
           'separated by commas (text-generation-webui\'s form: "\\n", ":", "\\"", "*") or a JSON array '
           '(llama-server\'s); "" = llama.cpp\'s default, those four; [] = none', tunes="dry_multiplier",
           parse=parse_breakers, v1_type=str | list[str], label="DRY sequence breakers",
           hint='"\\n", ":", "\\"", "*"   (empty = these four)', elem_id="dry-sequence-breakers"),
)
SAMPLERS: tuple[Option, ...] = tuple(o for o in SAMPLING if o.kind == "sampler")
BY_NAME: dict[str, Option] = {o.name: o for o in SAMPLING}


def _threads(value: Any) -> int | None:
    from backends.threads import parse_threads

    return parse_threads(value)


FLASH_ATTN = ("auto", "on", "off")


def parse_flash_attn(value: Any) -> str | None:
    """A flash-attention setting as "auto", "on" or "off": booleans and "true"/"false" (the API's and the
    CLI's older form) are on/off; None or "" = unset (the server's default). Anything else: InvalidRequest."""
    from backends.errors import InvalidRequest

    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    text = value.strip().lower() if isinstance(value, str) else None
    if text == "":
        return None
    text = {"true": "on", "false": "off"}.get(text, text)
    if text not in FLASH_ATTN:
        raise InvalidRequest(f"flash_attn must be auto, on or off (or true/false), got {value!r}.", "flash_attn")
    return text


# The loader options, in the Gradio /load_model API's order after (model, backend, quantization,
# api_base, api_key, gguf_file); each is a ModelSpec field. New ones go at the END.
LOADER: tuple[Option, ...] = (
    Option("n_ctx", int, 2048, "context length per conversation, in tokens (0 = the server's --n-ctx)",
           kind="loader", low=16, high=1 << 20, unset=0, label="Context length", info="tokens per conversation",
           elem_id="n-ctx"),
    Option("parallel", int, 4, "conversations decoded together, each with its own KV cache (0 = the server's "
           "--parallel)", kind="loader", low=1, high=64, unset=0, label="Parallel slots",
           info="conversations decoded together", elem_id="parallel"),
    Option("n_threads", int, None, "CPU threads of the model's engine, llama.cpp or torch (0 = the server's "
           "--threads, auto by default: the physical cores this process may use, adapted to the CPU other "
           "processes leave; a number is used exactly)", kind="loader", low=0, optional=True, unset=0,
           parse=_threads, label="Threads", info="every engine; 0 = auto (the physical cores this process may use)",
           elem_id="n-threads"),
    Option("n_gpu_layers", int, None, "llama.cpp layers on the GPU (-1 = all; \"\" = the server's default)",
           kind="loader", low=-1, high=100_000, optional=True, label="GPU layers",
           info="llama.cpp; -1 = all, 0 = CPU, empty = all if the build has a GPU"),
    Option("cache_type", str, None, "llama.cpp KV cache type: f16, q8_0 or q4_0 (\"\" = the server's; quantized "
           "ones use flash attention)", kind="loader", choices=("f16", "q8_0", "q4_0"), unset="", label="KV cache type",
           info="llama.cpp; q8_0/q4_0 halve/quarter the KV memory"),
    Option("flash_attn", str, "auto", "llama.cpp flash attention: auto, on or off (true/false = on/off; \"\" = the "
           "server's --flash-attn, auto by default: on wherever the device supports it, as llama-server's -fa auto). "
           "On is faster; the host prompt cache then restores replies identical up to flash attention's numerics "
           "(off: the same greedy text)", kind="loader", choices=FLASH_ATTN, unset="", parse=parse_flash_attn, v1_type=str | bool,
           label="Flash attention", info="llama.cpp; auto = on where supported; on for a quantized KV cache",
           elem_id="flash-attn"),
    Option("device_map", str, None, 'transformers: "auto", "cpu", "cuda", ... ("" = the GPU if there is one, '
           "else the CPU)", kind="loader", choices=("", "auto", "cpu", "cuda"), free=True, unset="",
           label="Device map", info="transformers; empty = the GPU if there is one"),
    Option("compute_dtype", str, "bfloat16", "transformers bitsandbytes 4-bit compute dtype: bfloat16, float16 or "
           'float32 ("" = bfloat16)', kind="loader", choices=("bfloat16", "float16", "float32"), unset="", label="Compute dtype",
           info="transformers bitsandbytes 4-bit"),
    Option("double_quant", bool, True, "transformers bitsandbytes 4-bit: quantize the quantization constants too "
           "(None = yes, unless the server says --no-double-quant)", kind="loader", label="Double quant",
           info="transformers bitsandbytes 4-bit"),
    Option("mmproj", str, None, 'llama.cpp vision: the multimodal projector GGUF ("" = an mmproj*.gguf beside the '
           "model file or in its Hub repo, if there is one)", kind="loader", unset="", free=True,
           label="Vision projector (mmproj)", info="llama.cpp; empty = an mmproj*.gguf beside the model or in its Hub repo",
           elem_id="mmproj"),
)
LOADER_BY_NAME: dict[str, Option] = {o.name: o for o in LOADER}


def gradio_options(options: Iterable[Option] = SAMPLING) -> tuple[Option, ...]:
    """The options that are Gradio API parameters and UI controls, in the API's order."""
    return tuple(o for o in options if o.gradio)


def check_sampler(option: Option, value: Any) -> Any:
    """``value`` as ``option``'s type, or InvalidRequest naming it (not a finite number, out of bounds)."""
    from backends.errors import InvalidRequest

    if value is None and option.optional:
        return None
    if option.parse is not None:  # its own coercion and checks (a text with a form: DRY's breakers)
        return option.parse(value)
    try:
        v = option.type(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(f"Sampling parameters must be finite numbers ({exc}).", option.name) from exc
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        raise InvalidRequest("Sampling parameters must be finite numbers.", option.name)
    why = option.out_of_bounds(v)
    if why:
        raise InvalidRequest(why, option.name)
    return v
