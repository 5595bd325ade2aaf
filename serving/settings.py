"""Settings: CLI flags <- environment variables (QUANTLAB_*) <- defaults.

The CLI is generated from the pydantic model, so a flag, its env var and its default are declared
once. Parsing happens in ``app.main()``, never at import.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backends.base import KV_CACHE_TYPES, MAX_PARALLEL, ModelSpec
from backends.errors import InvalidRequest
from backends.registry import default_registry
from backends.files.sources import EMBEDDED_ALIAS, default_cache_dir
from backends.threads import parse_threads
from serving.chat_service import MAX_EMBED_TOKENS, MAX_MESSAGE_CHARS, RequestLimits


# Load defaults are declared once, on ModelSpec; the flags show them.
_SPEC = {name: f.default for name, f in ModelSpec.__dataclass_fields__.items()}


def _zero_gpu() -> bool:
    """On a ZeroGPU Space each @spaces.GPU call runs in a forked worker: no engine threads there, so
    transformers one request at a time (the generate() path) is the default."""
    return bool(os.environ.get("SPACES_ZERO_GPU"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUANTLAB_", extra="ignore")

    model: str = Field(EMBEDDED_ALIAS, description="model to load at start: a GGUF file, a checkpoint folder, a Hub repo id, or 'embedded'")
    backend: str = Field(default_factory=lambda: "transformers" if _zero_gpu() else "llamacpp",
                         description=f"backend for --model: {' | '.join(default_registry().names())} (default llamacpp; "
                                     "transformers on a ZeroGPU Space, where torch gets the GPU)")
    quantization: str | None = Field(None, description="quantization for --model (default: the backend's default)")
    gguf_file: str | None = Field(None, description="for a Hub repo holding several GGUF files: which one to load")
    no_model: bool = Field(False, description="start with no model loaded")
    host: str = Field(default_factory=lambda: os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), description="address to bind")
    port: int = Field(default_factory=lambda: int(os.environ.get("GRADIO_SERVER_PORT", "7860")), description="port to bind")
    listen: bool = Field(False, description="bind 0.0.0.0 (restricts model paths to --models-dir)")
    auth: str | None = Field(None, description="USER:PASS (or a file of USER:PASS lines) protecting the UI and the Gradio API")
    api_key: str | None = Field(None, description="bearer key required on /v1; the UI/Gradio API then ask for it as password")
    protect_metrics: bool = Field(False, description="require the /v1 credentials on /metrics too")
    rate_limit_rpm: int = Field(0, description="requests per minute per client (API key, user or IP); 0 = no limit")
    forwarded_allow_ips: str | None = Field(default_factory=lambda: os.environ.get("FORWARDED_ALLOW_IPS") or None,
                                            description="comma-separated addresses or networks of the reverse proxies "
                                            "whose X-Forwarded-For/-Proto are believed (the client address for rate "
                                            "limits and logs), '*' for any; default none: every client is the address "
                                            "it connects from (uvicorn's FORWARDED_ALLOW_IPS is read too)")
    max_streams_per_client: int = Field(0, description="concurrent generations per client; 0 = no limit")
    n_ctx: int = Field(_SPEC["n_ctx"], description="context length per conversation (llama.cpp; caps transformers)")
    no_prefix_cache: bool = Field(False, description="llama.cpp: recompute every prompt (exactly repeatable greedy output, slower TTFT)")
    prompt_cache_mib: int = Field(1024, ge=0, description="llama.cpp: host memory (MiB) keeping the KV of prompts that "
                                  "left a slot, so a returning conversation or a shared system prompt is not prefilled again (0 = off)")
    parallel: int = Field(default_factory=lambda: 1 if _zero_gpu() else _SPEC["parallel"], ge=1, le=MAX_PARALLEL, description="conversations decoded together in one batch, llama.cpp and transformers (KV cache for each)")
    speculative: Literal["ngram"] | None = Field(_SPEC["speculative"], description="speculative decoding without a draft "
                                                 "model for greedy requests: 'ngram' (prompt lookup; llama.cpp with --parallel 1, "
                                                 "transformers' prompt_lookup_num_tokens); output identical to plain decoding")
    spec_draft_tokens: int = Field(_SPEC["spec_draft_tokens"], ge=1, le=64, description="with --speculative: most draft "
                                   "tokens verified per forward pass")
    n_threads: int | None = Field(None, description="CPU threads of every engine (llama.cpp and torch): 'auto' (default: "
                                  "the physical cores this process may use) or a number, used exactly; also --threads")
    n_gpu_layers: int | None = Field(None, description="llama.cpp layers on the GPU (default: all when the build has GPU support; 0 = CPU)")
    cache_type: str | None = Field(None, description="llama.cpp KV cache type: f16 (default), q8_0 or q4_0 "
                                   "(quantized types use flash attention)")
    flash_attn: bool = Field(False, description="llama.cpp: use flash attention")
    device_map: str | None = Field(None, description="transformers device map: auto, cpu, cuda, ... (default: the GPU if there is one, else cpu)")
    compute_dtype: str | None = Field(None, description="transformers bitsandbytes 4-bit compute dtype: bfloat16 (default), float16 or float32")
    no_double_quant: bool = Field(False, description="transformers bitsandbytes 4-bit: do not quantize the quantization constants")
    api_base: str | None = Field(None, description="remote backend: base URL of an OpenAI-compatible server")
    remote_api_key: str | None = Field(None, description="remote backend: its API key (sent to --api-base only; a load "
                                       "naming another URL sends the caller's key or none)")
    remote_timeout: float = Field(_SPEC["remote_timeout"], gt=0, le=600, description="remote backend: seconds a load "
                                  "waits for the engine to connect and list its models (streams wait up to 300 s "
                                  "between chunks)")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="where derived models are cached")
    chat_dir: Path | None = Field(None, description="keep each logged-in user's past chats on the server in this folder "
                                                     "(default: only in the browser's storage)")
    models_dir: Path = Field(Path("models"), description="when given: serve the GGUF files and checkpoint folders in "
                             "this folder by name (requests choose by their model field; GET /v1/models lists them); "
                             "with --listen, local models must be inside this folder")
    models_max: int = Field(0, ge=0, description="with --models-dir: most models loaded by name at once beside the "
                            "chat's model; the least recently used idle one is unloaded to make room (0 = no limit)")
    no_models_autoload: bool = Field(False, description="with --models-dir: refuse a request naming a model that is not "
                                     "loaded (load it with POST /models/load) instead of loading it for the request")
    keep_alive: float = Field(0.0, ge=0, description="with --models-dir: unload a model loaded by name after this long "
                              "idle: seconds, or 30s, 5m, 1h (0 = until evicted)")
    trust_remote_code: bool = Field(False, description="allow transformers models' own code (off by default)")
    log_prompts: bool = Field(False, description="include prompt text in the request log")
    request_log: str | None = Field("-", description="JSON-lines request log: '-' for stdout, a file path, or '' for none")
    shutdown_timeout: int = Field(30, ge=0, description="on SIGTERM, seconds running streams get to finish; "
                                  "streams still running then end with an error event and the exit code is 1")
    max_body_bytes: int = Field(4 * 2**20, ge=1024, description="largest request body accepted (/v1 and the Gradio API); "
                                "larger ones get 413 before they are parsed")
    max_upload_bytes: int = Field(20 * 2**20, ge=1024, description="largest file upload (Import JSON, an evaluation "
                                  "text); uploads are deleted after an hour and at most 10 times this is stored")
    max_prompt_chars: int = Field(MAX_MESSAGE_CHARS, ge=1, description="largest conversation, in characters "
                                  "(system prompt + history + message), checked before tokenizing, on every entry point")
    max_prompt_tokens: int = Field(0, ge=0, description="largest prompt in tokens, checked before generating, on "
                                   "every entry point; 0 = the model's context")
    max_embed_tokens: int = Field(MAX_EMBED_TOKENS, ge=1, description="largest embeddings request, in tokens over "
                                  "all its inputs (/v1/embeddings); larger ones are refused before any work")
    allow_remote: Annotated[list[str], NoDecode] = Field(default_factory=list, description="with --listen: base URLs (PREFIX ...) the "
                                    "remote backend may use, e.g. http://gpu-box:8000/v1; none by default")
    load_drain_timeout: float = Field(300.0, ge=0, description="on /load_model, seconds the replaced model gets to "
                                      "finish the replies it is running (new requests already go to the new model); "
                                      "replies still running then end with an error")
    memory_budget_mib: int = Field(0, ge=0, description="most memory (MiB) the loaded models may take together; a "
                                   "/load_model whose estimate (weights + KV at n_ctx x parallel + overhead) does not fit "
                                   "it, or the free memory, is refused (0 = the free memory alone)")
    monitor_interval: float = Field(1.0, description="seconds between memory/CPU/GPU samples")

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        names = default_registry().names()
        if v not in names:
            raise ValueError(f"backend must be one of {', '.join(names)}")
        return v

    @field_validator("cache_type")
    @classmethod
    def _cache_type(cls, v: str | None) -> str | None:
        if v is not None and v.strip().lower() not in KV_CACHE_TYPES:
            raise ValueError(f"cache_type must be one of {', '.join(KV_CACHE_TYPES)}")
        return v.strip().lower() if v else None

    @field_validator("n_threads", mode="before")
    @classmethod
    def _threads(cls, v):
        try:
            return parse_threads(v)  # "auto", "", 0 -> None (auto)
        except InvalidRequest as exc:  # its message names the accepted values
            raise ValueError(str(exc)) from None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, v):
        if isinstance(v, str) and v.strip()[-1:].lower() in ("s", "m", "h"):
            v = v.strip()
            return float(v[:-1]) * {"s": 1, "m": 60, "h": 3600}[v[-1].lower()]
        return v

    @property
    def pool_enabled(self) -> bool:
        """Whether --models-dir was given (flag or environment): the server then serves its models by name."""
        return "models_dir" in self.model_fields_set

    @field_validator("allow_remote", mode="before")
    @classmethod
    def _prefixes(cls, v):
        if isinstance(v, str):  # QUANTLAB_ALLOW_REMOTE="http://a:8000 http://b:8000" (or a JSON list)
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [p for p in v.replace(",", " ").split() if p]
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 0 <= v <= 65535:
            raise ValueError("port must be 0-65535")
        return v

    @property
    def bind_host(self) -> str:
        return "0.0.0.0" if self.listen else self.host

    @property
    def exposed(self) -> bool:
        return self.bind_host not in ("127.0.0.1", "localhost", "::1")

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(self.max_prompt_chars, self.max_prompt_tokens, self.max_embed_tokens)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_args(argv: list[str] | None = None) -> Settings:
    """Settings from ``argv`` over the environment over defaults."""
    parser = argparse.ArgumentParser(prog="app.py", description="QuantLab: serve, monitor and compare quantized LLMs.")
    for name, field in Settings.model_fields.items():
        env = f"QUANTLAB_{name.upper()}"
        help_ = f"{field.description} [env {env}]"
        if field.annotation is bool:
            parser.add_argument(_flag(name), dest=name, action="store_true", default=None, help=help_)
        elif name == "speculative":
            parser.add_argument(_flag(name), dest=name, default=None, choices=["ngram"], help=help_)
        elif name == "allow_remote":
            parser.add_argument(_flag(name), dest=name, nargs="+", default=None, help=help_, metavar="PREFIX")
        elif name == "n_threads":  # --threads auto|N, the name every engine shares; --n-threads kept
            parser.add_argument("--threads", _flag(name), dest=name, default=None, help=help_, metavar="auto|N")
        else:
            parser.add_argument(_flag(name), dest=name, default=None, help=help_, metavar=name.upper())
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**given)
