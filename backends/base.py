"""The one contract every backend implements, and the dataclasses it speaks in.

A backend holds at most one model. The manager (``backends/manager.py``) owns backend
instances and runs every stream through one ``Recorder`` (``monitoring/metrics.py`` implements
it; the manager only knows this protocol, so imports keep pointing down).
"""

from __future__ import annotations

import abc
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

from backends.errors import InvalidRequest, UnsupportedQuantization
from backends.grammar_limits import check_gbnf, check_schema
from backends.options import BY_NAME, LOADER, LOADER_BY_NAME, SAMPLERS, check_sampler, parse_flash_attn

# The contract's bounds, as the options declare them (backends/options.py).
MAX_NEW_TOKENS_LIMIT = BY_NAME["max_new_tokens"].high
MAX_PARALLEL = LOADER_BY_NAME["parallel"].high  # batch slots per model
KV_CACHE_TYPES = LOADER_BY_NAME["cache_type"].choices  # llama.cpp KV cache types offered (GGML type names)

Progress = Callable[[float, str], None]
"""Progress callback: (fraction in [0, 1], message)."""


def _no_progress(fraction: float, message: str) -> None:
    return None


def _declared(options, frozen: bool = True):
    """A dataclass decorator that first gives the class one field per declared option
    (``backends/options.py``), after the fields it declares itself, in declaration order."""
    def wrap(cls):
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for o in options:
            annotations[o.name] = o.annotation
            setattr(cls, o.name, o.default)
        cls.__annotations__ = annotations
        return dataclass(frozen=frozen)(cls)
    return wrap


@_declared(LOADER)
class ModelSpec:
    """What to load. ``source`` is a local path (file or folder) or a Hub repo id. The loader options
    the user picks (context length, batch slots, threads, ...: ``backends.options.LOADER``) are
    fields too, after these, with their declared defaults."""

    source: str
    backend: str
    quantization: str | None = None  # backend-specific name; None = the backend's default
    prefix_cache: bool = True  # llama.cpp batched: reuse a slot's KV for a shared prompt prefix
    prompt_cache_mib: int = 1024  # llama.cpp batched: host memory for KV cells that left a slot (0 = off)
    cpu_offload: bool = False  # transformers + bnb int8: allow fp32 CPU offload of layers that do not fit
    trust_remote_code: bool = False
    gguf_file: str | None = None  # for a Hub repo holding several GGUF files
    api_base: str | None = None  # remote: base URL of the OpenAI-compatible server
    api_key: str | None = None  # remote: bearer key (never logged)
    remote_timeout: float = 30.0  # remote: seconds a load waits for the engine (connect, answer)
    served_name: str | None = None  # name shown to users and /v1 clients; default: derived from source
    speculative: str | None = None  # "ngram": prompt-lookup speculative decoding for greedy requests; None = off
    spec_draft_tokens: int = 8  # speculative: most draft tokens verified per forward pass

    def __post_init__(self) -> None:
        # one spelling of flash attention everywhere (status, the pool, equality): true/false -> on/off
        fa = parse_flash_attn(self.flash_attn)
        object.__setattr__(self, "flash_attn", fa or "auto")

    def with_(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ModelSpec:
        """The one place server settings (``serving.settings.Settings``, read by attribute) become a
        spec; ``overrides`` (the UI's or the API's choices) win."""
        fields = {
            "source": settings.model, "backend": settings.backend, "quantization": settings.quantization,
            "gguf_file": settings.gguf_file, "api_base": settings.api_base, "api_key": settings.remote_api_key,
            "prefix_cache": not settings.no_prefix_cache,
            "prompt_cache_mib": getattr(settings, "prompt_cache_mib", 1024),
            "trust_remote_code": settings.trust_remote_code,
            "speculative": getattr(settings, "speculative", None),
            "spec_draft_tokens": getattr(settings, "spec_draft_tokens", 8),
            "remote_timeout": getattr(settings, "remote_timeout", 30.0),
        }
        for o in LOADER:  # the loader options the settings give (None: ModelSpec's default)
            if getattr(settings, o.name, None) is not None:
                fields[o.name] = getattr(settings, o.name)
        if getattr(settings, "no_double_quant", False):
            fields["double_quant"] = False
        fields.update(overrides)
        return cls(**fields)

    def __repr__(self) -> str:  # keep api_key out of logs and tracebacks
        shown = {k: v for k, v in self.__dict__.items() if k != "api_key" and v is not None}
        return f"ModelSpec({shown})"


@_declared(SAMPLERS)
class SamplingParams:
    """How to sample: one field per sampler declared in ``backends.options.SAMPLING`` (max_new_tokens,
    temperature, top_p, top_k, repetition_penalty, seed, then min_p, typical_p, ...), each checked
    against its declared type and bounds when the params are made (InvalidRequest naming it), so a
    SamplingParams is valid by construction. A seed that is None or negative means random (None)."""

    def __post_init__(self) -> None:
        for o in SAMPLERS:
            object.__setattr__(self, o.name, check_sampler(o, getattr(self, o.name)))
        seed = self.seed
        if seed is not None and seed >= 2**63:
            raise InvalidRequest(f"seed must be below 2**63, got {seed}.", "seed")
        # None or negative: random; else the 32-bit seed the engines' samplers take
        object.__setattr__(self, "seed", None if seed is None or seed < 0 else seed % 2**32)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def samplers_set(self) -> tuple[str, ...]:
        """The extra samplers this request turns on (away from their neutral value), in a stable order:
        the ones a backend must declare (the core ones every backend honours; one that only tunes
        another changes nothing alone)."""
        return tuple(o.name for o in SAMPLERS
                     if not o.core and o.tunes is None and getattr(self, o.name) != o.neutral_value)

    def changed(self) -> dict[str, Any]:
        """{name: value} of the samplers set away from their declared defaults (the request log's
        record of what the engine was given)."""
        base = type(self)()
        return {o.name: getattr(self, o.name) for o in SAMPLERS if getattr(self, o.name) != getattr(base, o.name)}

    def validated(self) -> SamplingParams:
        """Itself: the bounds were checked when it was made."""
        return self


@dataclass(frozen=True, repr=False)
class ImageInput:
    """A picture in a message, already decoded and checked (``serving/images.py``): its RGB pixels,
    ``width`` x ``height`` x 3 bytes, row by row. ``digest`` (sha256 of the pixels) names it: two
    requests with the same picture carry the same digest."""

    rgb: bytes
    width: int
    height: int
    digest: str

    def __repr__(self) -> str:  # keep megabytes of pixels out of logs and tracebacks
        return f"ImageInput({self.width}x{self.height}, {self.digest[:12]})"


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    # OpenAI-shaped tool calls an assistant message made: ({"id", "type": "function", "function":
    # {"name", "arguments" (a JSON string)}}, ...); rendered by the model's chat template.
    tool_calls: tuple[Any, ...] = ()
    tool_call_id: str | None = None  # role "tool": the call this message answers
    name: str | None = None  # role "tool": the function's name
    reasoning: str | None = None  # assistant thinking text kept apart (left out of the next prompt)
    # pictures the message shows (a vision model sees them before the message's text)
    images: tuple[ImageInput, ...] = ()


ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Constraint:
    """Constrained decoding: the output must match. ``kind``: "json_object" (any JSON object),
    "json_schema" (``schema``: the JSON Schema as JSON text) or "grammar" (``schema``: a GBNF grammar,
    llama.cpp only). ``param``: the request field it came from (``tools`` for a forced tool call),
    named by every refusal. A backend that cannot constrain refuses with InvalidRequest naming it.
    A schema or grammar over the bounds of ``grammar_limits`` is refused here, before any engine
    sees it."""

    kind: str
    schema: str | None = None
    param: str = "response_format"

    def __post_init__(self) -> None:
        if self.kind not in ("json_object", "json_schema", "grammar"):
            raise InvalidRequest(f"Unknown constraint kind {self.kind!r}.", self.param)
        if self.kind != "json_object" and not self.schema:
            raise InvalidRequest(f"A {self.kind} constraint needs its schema.", self.param)
        if self.kind == "json_schema":
            try:
                schema = json.loads(self.schema)
            except RecursionError:
                raise InvalidRequest(f"{self.param}: the JSON schema nests too deeply.", self.param) from None
            except (TypeError, ValueError):
                return  # not JSON: the backend refuses it by name when it builds its grammar
            check_schema(schema, self.param)
        elif self.kind == "grammar":
            check_gbnf(self.schema, self.param)


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()  # stop strings: the reply ends before the first one (finish_reason "stop")
    max_prompt_tokens: int = 0  # the prompt's token limit (--max-prompt-tokens); 0 = the model's context
    # Raw text continuation (Notebook, /complete, /v1/completions): ``prompt`` is tokenized as is (BOS
    # added as the model says), no chat template; ``messages`` must then be empty.
    prompt: str | None = None
    # Continue: the last message is the assistant's, rendered open (no end-of-turn) so the reply extends
    # it instead of starting a new turn.
    continue_final: bool = False
    tools: tuple[Any, ...] = ()  # OpenAI tool definitions ({"type": "function", "function": {...}}), for the template
    template_kwargs: tuple[tuple[str, Any], ...] = ()  # extra chat-template variables, e.g. (("enable_thinking", False),)
    constraint: Constraint | None = None
    logprobs: int | None = None  # None = none; 0..20 = the chosen token's logprob and this many alternatives

    def __post_init__(self) -> None:
        if self.prompt is not None:
            if self.messages:
                raise InvalidRequest("A request has either a prompt or messages, not both.", "prompt")
            if not self.prompt:
                raise InvalidRequest("The prompt is empty: type something to continue.", "prompt")
            return
        if not self.messages:
            raise InvalidRequest("A chat request needs at least one message.", "messages")
        for m in self.messages:
            if m.role not in ROLES:
                raise InvalidRequest(f"Unknown message role {m.role!r}.", "messages")
        if self.continue_final:
            if self.messages[-1].role != "assistant":
                raise InvalidRequest("Continue needs a reply to extend: the last message is not the assistant's.",
                                     "messages")
        elif not any(m.role in ("user", "tool") and (m.content.strip() or m.images) for m in self.messages):
            raise InvalidRequest("The message is empty: type something to send.", "messages")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidRequest(f"top_logprobs must be between 0 and 20, got {self.logprobs}.", "top_logprobs")

    @property
    def images(self) -> tuple[ImageInput, ...]:
        """Every picture of the conversation, in order."""
        return tuple(img for m in self.messages for img in m.images)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log probability (natural log, before temperature and truncation) and the
    ``top`` most likely alternatives, as (token text, logprob). llama.cpp reports the raw logits'
    softmax, as llama-server does; transformers the scores after its penalties and any constraint's
    mask (what its generate() hands to temperature), so alternatives a constraint forbids are left out."""

    token: str
    logprob: float
    token_bytes: bytes = b""
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """A piece of streamed output. The last delta of a stream carries ``finish_reason``
    ("stop", "length" or "cancelled") and ``prompt_tokens``; its text may be empty."""

    text: str
    tokens: int = 0  # generated tokens this delta accounts for
    finish_reason: str | None = None
    prompt_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token of ``text`` when the request asked for them
    note: str | None = None  # something the user should see beside the reply (e.g. "3 oldest turns left out")
    draft_tokens: int = 0  # speculative decoding: tokens drafted for this request (on the final delta)
    accepted_tokens: int = 0  # speculative decoding: drafted tokens the model accepted (on the final delta)
    stop_sequence: str | None = None  # the request's stop string that ended the reply (finish_reason "stop")


@dataclass(frozen=True)
class LoadedModel:
    name: str
    backend: str
    quantization: str
    source: str  # resolved local path (or URL for remote)
    context_length: int
    footprint_bytes: int  # measured after load (weights + buffers); 0 when unknown (remote)
    load_seconds: float
    device: str  # "cpu", "cuda:0", "remote", ...
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def capabilities(self) -> list[str]:
        """What the model takes, in Ollama's words (/v1/models and /api/show say it): "completion",
        and "vision" for a model that sees pictures."""
        return ["completion"] + (["vision"] if self.details.get("vision") else [])

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "quantization": self.quantization,
            "source": self.source,
            "context_length": self.context_length,
            "footprint_bytes": self.footprint_bytes,
            "footprint_mib": round(self.footprint_bytes / 2**20, 1),
            "load_seconds": round(self.load_seconds, 3),
            "device": self.device,
            **self.details,
        }


class Backend(abc.ABC):
    """One model, one backend instance. Subclasses set the class attributes and the methods."""

    name: ClassVar[str]
    # subset of {"stream", "logits", "tokenize", "files" (loads local files / Hub repos)}
    capabilities: ClassVar[frozenset[str]]
    quantizations: ClassVar[tuple[str, ...]]  # the menu
    default_quantization: ClassVar[str]
    pseudo_quantizations: ClassVar[tuple[str, ...]] = ()  # menu entries that are no variant ("as file")
    # the samplers (``backends.options.SAMPLING``' names, beyond the core ones) this backend honours;
    # one set away from its neutral value on a backend that does not list it is refused by name
    samplers: ClassVar[frozenset[str]] = frozenset()
    # request features beyond plain chat this backend honours, a subset of {"prompt" (raw
    # continuation), "continue_final", "tools", "constraint", "logprobs", "embeddings", "vision"
    # (images in messages, for a model that sees: its LoadedModel's ``details["vision"]``)}
    features: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def check_request(cls, request: ChatRequest) -> None:
        """InvalidRequest naming the first sampler or feature of ``request`` this backend cannot
        honour; called by the manager before anything is generated."""
        for name in request.params.samplers_set():
            if name not in cls.samplers:
                raise InvalidRequest(f"The {cls.name} backend does not support the {name} sampler: "
                                     "leave it at its default or load the model with a backend that has it.", name)
        wanted = {"prompt": request.prompt is not None, "continue_final": request.continue_final,
                  "tools": bool(request.tools), "constraint": request.constraint is not None,
                  "logprobs": request.logprobs is not None, "vision": bool(request.images)}
        params = {"prompt": "prompt", "continue_final": "messages", "tools": "tools",
                  "constraint": "response_format", "logprobs": "logprobs", "vision": "messages"}
        for feature, asked in wanted.items():
            if asked and feature not in cls.features:
                raise InvalidRequest(f"The {cls.name} backend does not support {feature.replace('_', ' ')}.",
                                     params[feature])

    @classmethod
    def normalize_quantization(cls, quantization: str | None) -> str:
        """The canonical menu name for ``quantization`` (None or "" = the default), or
        UnsupportedQuantization naming the choices."""
        if quantization is None or str(quantization).strip() == "":
            return cls.default_quantization
        q = str(quantization).strip()
        for name in cls.quantizations:
            if name.lower() == q.lower():
                return name
        raise UnsupportedQuantization(
            f"Unknown quantization {q!r} for the {cls.name} backend: choose one of {', '.join(cls.quantizations)}.")

    @classmethod
    def variant_quantizations(cls) -> tuple[str, ...]:
        """The quantizations that each make a distinct model (the lab's variants)."""
        return tuple(q for q in cls.quantizations if q not in cls.pseudo_quantizations)

    @classmethod
    def remote_base(cls, spec: ModelSpec) -> str | None:
        """The network address a load of ``spec`` would contact (checked against --allow-remote
        before loading), or None for a backend that runs the model here."""
        return None

    def __init__(self, cache_dir: Path | None = None):
        """``cache_dir``: where the backend may write derived models."""

    @abc.abstractmethod
    def load(self, spec: ModelSpec, progress: Progress = _no_progress) -> LoadedModel:
        """Load the model or raise a ModelLoadError subclass. Called once per instance."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Free every byte of RAM/VRAM the model holds. Idempotent."""

    @abc.abstractmethod
    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[TextDelta]:
        """Generate a reply. Stops within one token once ``cancel`` is set (finish_reason
        "cancelled"). Raises ContextLengthExceeded before generating if the prompt does not fit
        the context or exceeds ``request.max_prompt_tokens`` (``check_prompt_tokens``)."""

    @property
    def max_concurrency(self) -> int:
        """How many stream() calls may run at once (batch slots); the manager queues the rest."""
        return 1

    def tokenize(self, text: str) -> list[int]:
        raise InvalidRequest(f"The {self.name} backend cannot tokenize.")

    def logits(self, token_ids: Sequence[int]) -> Any:
        """Next-token logits for every position of ``token_ids``: float32 array [len, vocab]."""
        raise InvalidRequest(f"The {self.name} backend does not expose logits.")

    def detokenize(self, token_ids: Sequence[int]) -> str:
        raise InvalidRequest(f"The {self.name} backend cannot detokenize.")

    def cache_bytes(self) -> int:
        """Host memory the engine holds now in caches outside the model's own account (weights + KV +
        overhead): llama.cpp's host prompt cache. 0 where there is none."""
        return 0

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The tokens ``request``'s prompt takes once rendered (the chat template applied): what the
        model reads before its reply (the lab scores a reply after exactly these)."""
        raise InvalidRequest(f"The {self.name} backend cannot render a prompt to tokens.")

    def count_prompt_tokens(self, request: ChatRequest) -> int:
        """How many tokens ``request``'s prompt takes once rendered (the chat template applied):
        the live context counter."""
        raise InvalidRequest(f"The {self.name} backend cannot count tokens.")

    def embed(self, texts: Sequence[str], cancel: threading.Event | None = None,
              on_input: Callable[[int], None] | None = None) -> list[list[float]]:
        """One embedding per text ("embeddings" feature), in order. Once ``cancel`` is set it stops
        between inputs and returns the vectors made so far; ``on_input(tokens)`` runs after each input
        (the manager records progress with it)."""
        raise InvalidRequest(f"The {self.name} backend does not make embeddings.")


class Recorder(Protocol):
    """Times and records generations (``monitoring.metrics.MetricsRecorder``); the manager runs every
    stream, chat or lab, through one."""

    def start(self, endpoint: str, model: str, quantization: str, t0: float | None = None,
              client: str | None = None, prompt: str | None = None) -> Any:
        """A timer for one request; its ``stats`` fill in as the stream runs."""

    def timed(self, timer: Any, stream_factory: Callable[[], Iterator[TextDelta]],
              acquire: Callable[[], bool] | None = None) -> Iterator[TextDelta]:
        """Run ``stream_factory()`` under ``timer``; ``acquire`` waits for a model slot."""


def check_vision(request: ChatRequest, info: LoadedModel) -> None:
    """InvalidRequest (naming the capability) when ``request`` shows pictures to a model that does not see."""
    if request.images and not info.details.get("vision"):
        raise InvalidRequest(f"{info.name} is a text-only model (no vision capability): it cannot read images. "
                             "Load a vision model (with its mmproj projector for llama.cpp) or send text only.",
                             "messages")


def check_prompt_tokens(request: ChatRequest, n_prompt: int, n_ctx: int) -> None:
    """Raise ContextLengthExceeded, before anything is generated, when the prompt's ``n_prompt``
    tokens exceed the request's limit or do not leave room in the ``n_ctx``-token context."""
    from backends.errors import ContextLengthExceeded

    limit = request.max_prompt_tokens
    if limit and n_prompt > limit:
        raise ContextLengthExceeded(
            f"The conversation is {n_prompt} tokens long; this server accepts at most {limit} prompt tokens.")
    if n_prompt >= n_ctx:
        raise ContextLengthExceeded(
            f"The conversation is {n_prompt} tokens long but the model's context holds {n_ctx}: "
            "shorten the message, clear the chat, or load the model with a larger context.")
