"""The one contract every backend implements, and the dataclasses it speaks in.

A backend holds at most one model. The manager (``backends/manager.py``) owns backend
instances and runs every stream through one ``Recorder`` (``monitoring/metrics.py`` implements
it; the manager only knows this protocol, so imports keep pointing down).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

from backends.errors import InvalidRequest, UnsupportedQuantization

# Bounds for user-supplied sampling parameters. Anything outside is a clear InvalidRequest.
MAX_NEW_TOKENS_LIMIT = 32768
MAX_TEMPERATURE = 5.0
MAX_REPETITION_PENALTY = 5.0
MAX_PARALLEL = 64  # batch slots per model

Progress = Callable[[float, str], None]
"""Progress callback: (fraction in [0, 1], message)."""


def _no_progress(fraction: float, message: str) -> None:
    return None


@dataclass(frozen=True)
class ModelSpec:
    """What to load. ``source`` is a local path (file or folder) or a Hub repo id."""

    source: str
    backend: str
    quantization: str | None = None  # backend-specific name; None = the backend's default
    n_ctx: int = 2048  # per conversation
    n_threads: int | None = None  # None = the backend picks (physical cores)
    parallel: int = 4  # sequences decoded together in one batch (continuous batching), both local backends
    prefix_cache: bool = True  # llama.cpp batched: reuse a slot's KV for a shared prompt prefix
    n_gpu_layers: int | None = None  # llama.cpp: None = all if this build has GPU offload, 0 = CPU, -1 = all
    device_map: str | None = None  # transformers: "auto", "cpu", "cuda", ...; None = GPU if present else CPU
    cpu_offload: bool = False  # transformers + bnb int8: allow fp32 CPU offload of layers that do not fit
    trust_remote_code: bool = False
    double_quant: bool = True  # bnb 4-bit: quantize the quantization constants too
    compute_dtype: str = "bfloat16"  # bnb 4-bit compute dtype
    gguf_file: str | None = None  # for a Hub repo holding several GGUF files
    api_base: str | None = None  # remote: base URL of the OpenAI-compatible server
    api_key: str | None = None  # remote: bearer key (never logged)
    served_name: str | None = None  # name shown to users and /v1 clients; default: derived from source

    def with_(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ModelSpec:
        """The one place server settings (``serving.settings.Settings``, read by attribute) become a
        spec; ``overrides`` (the UI's or the API's choices) win."""
        fields = {
            "source": settings.model, "backend": settings.backend, "quantization": settings.quantization,
            "gguf_file": settings.gguf_file, "api_base": settings.api_base, "api_key": settings.remote_api_key,
            "n_ctx": settings.n_ctx, "n_threads": settings.n_threads, "n_gpu_layers": settings.n_gpu_layers,
            "parallel": settings.parallel, "prefix_cache": not settings.no_prefix_cache,
            "trust_remote_code": settings.trust_remote_code,
        }
        fields.update(overrides)
        return cls(**fields)

    def __repr__(self) -> str:  # keep api_key out of logs and tracebacks
        shown = {k: v for k, v in self.__dict__.items() if k != "api_key" and v is not None}
        return f"ModelSpec({shown})"


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    repetition_penalty: float = 1.0
    seed: int | None = None  # None or negative: random

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validated(self) -> SamplingParams:
        """Return a normalised copy, or raise InvalidRequest naming the bad parameter."""
        try:
            mnt = int(self.max_new_tokens)
            temperature = float(self.temperature)
            top_p = float(self.top_p)
            top_k = int(self.top_k)
            rep = float(self.repetition_penalty)
            seed = None if self.seed is None or int(self.seed) < 0 else int(self.seed)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidRequest(f"Sampling parameters must be finite numbers ({exc}).") from exc
        if seed is not None and seed >= 2**63:
            raise InvalidRequest(f"seed must be below 2**63, got {seed}.", "seed")
        if seed is not None:
            seed %= 2**32  # what the engines' samplers take (a 32-bit seed)
        if not 1 <= mnt <= MAX_NEW_TOKENS_LIMIT:
            raise InvalidRequest(
                f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {mnt}.", "max_new_tokens"
            )
        if not 0.0 <= temperature <= MAX_TEMPERATURE:
            raise InvalidRequest(f"temperature must be between 0 and {MAX_TEMPERATURE}, got {temperature}.", "temperature")
        if not 0.0 < top_p <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {top_p}.", "top_p")
        if top_k < 0:
            raise InvalidRequest(f"top_k must be 0 (disabled) or positive, got {top_k}.", "top_k")
        if not 0.0 < rep <= MAX_REPETITION_PENALTY:
            raise InvalidRequest(
                f"repetition_penalty must be in (0, {MAX_REPETITION_PENALTY}], got {rep}.", "repetition_penalty"
            )
        return SamplingParams(mnt, temperature, top_p, top_k, rep, seed)


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()  # stop strings: the reply ends before the first one (finish_reason "stop")
    max_prompt_tokens: int = 0  # the prompt's token limit (--max-prompt-tokens); 0 = the model's context

    def __post_init__(self) -> None:
        if not self.messages:
            raise InvalidRequest("A chat request needs at least one message.", "messages")
        for m in self.messages:
            if m.role not in ("system", "user", "assistant"):
                raise InvalidRequest(f"Unknown message role {m.role!r}.", "messages")
        if not any(m.role == "user" and m.content.strip() for m in self.messages):
            raise InvalidRequest("The message is empty: type something to send.", "messages")


@dataclass(frozen=True)
class TextDelta:
    """A piece of streamed output. The last delta of a stream carries ``finish_reason``
    ("stop", "length" or "cancelled") and ``prompt_tokens``; its text may be empty."""

    text: str
    tokens: int = 0  # generated tokens this delta accounts for
    finish_reason: str | None = None
    prompt_tokens: int = 0


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


class Recorder(Protocol):
    """Times and records generations (``monitoring.metrics.MetricsRecorder``); the manager runs every
    stream, chat or lab, through one."""

    def start(self, endpoint: str, model: str, quantization: str, t0: float | None = None,
              client: str | None = None, prompt: str | None = None) -> Any:
        """A timer for one request; its ``stats`` fill in as the stream runs."""

    def timed(self, timer: Any, stream_factory: Callable[[], Iterator[TextDelta]],
              acquire: Callable[[], bool] | None = None) -> Iterator[TextDelta]:
        """Run ``stream_factory()`` under ``timer``; ``acquire`` waits for a model slot."""


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
