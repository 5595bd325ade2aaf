"""Model settings: what the server loads at start and how (the engine's load options).

One half of ``serving.settings.Settings`` (the other is ``serving.server_settings``); the CLI flags are
generated from both. ``ModelSpec.from_settings`` reads this half only: a load option is a field here.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backends.base import KV_CACHE_TYPES, MAX_PARALLEL, ModelSpec
from backends.errors import InvalidRequest
from backends.options import parse_flash_attn
from backends.registry import default_registry
from backends.files.sources import EMBEDDED_ALIAS
from backends.threads import parse_threads


# Load defaults are declared once, on ModelSpec; the flags show them.
_SPEC = {name: f.default for name, f in ModelSpec.__dataclass_fields__.items()}


def _zero_gpu() -> bool:
    """On a ZeroGPU Space each @spaces.GPU call runs in a forked worker: no engine threads there, so
    transformers one request at a time (the generate() path) is the default."""
    return bool(os.environ.get("SPACES_ZERO_GPU"))


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUANTLAB_", extra="ignore")

    model: str = Field(EMBEDDED_ALIAS, description="model to load at start: a GGUF file, a checkpoint folder, a Hub repo id, or 'embedded'")
    backend: str = Field(default_factory=lambda: "transformers" if _zero_gpu() else "llamacpp",
                         description=f"backend for --model: {' | '.join(default_registry().names())} (default llamacpp; "
                                     "transformers on a ZeroGPU Space, where torch gets the GPU)")
    quantization: str | None = Field(None, description="quantization for --model (default: the backend's default)")
    gguf_file: str | None = Field(None, description="for a Hub repo holding several GGUF files: which one to load")
    no_model: bool = Field(False, description="start with no model loaded")
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
    flash_attn: str = Field(_SPEC["flash_attn"], description="llama.cpp flash attention: auto (default: on wherever the "
                            "device supports it, as llama-server's -fa auto), on or off; --flash-attn alone = on, "
                            "--no-flash-attn = off. With it on, the prompt cache's replies are identical up to flash "
                            "attention's numerics; off: the same greedy text")
    device_map: str | None = Field(None, description="transformers device map: auto, cpu, cuda, ... (default: the GPU if there is one, else cpu)")
    compute_dtype: str | None = Field(None, description="transformers bitsandbytes 4-bit compute dtype: bfloat16 (default), float16 or float32")
    no_double_quant: bool = Field(False, description="transformers bitsandbytes 4-bit: do not quantize the quantization constants")
    mmproj: str | None = Field(None, description="llama.cpp vision: the multimodal projector GGUF for --model "
                               "(default: an mmproj*.gguf beside the model file or in its Hub repo)")
    api_base: str | None = Field(None, description="remote backend: base URL of an OpenAI-compatible server")
    remote_api_key: str | None = Field(None, description="remote backend: its API key (sent to --api-base only; a load "
                                       "naming another URL sends the caller's key or none)")
    remote_timeout: float = Field(_SPEC["remote_timeout"], gt=0, le=600, description="remote backend: seconds a load "
                                  "waits for the engine to connect and list its models (streams wait up to 300 s "
                                  "between chunks)")
    trust_remote_code: bool = Field(False, description="allow transformers models' own code (off by default)")

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

    @field_validator("flash_attn", mode="before")
    @classmethod
    def _flash_attn(cls, v):
        try:
            return parse_flash_attn(v) or "auto"  # true/false (the older flag's values) = on/off
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None

    @field_validator("n_threads", mode="before")
    @classmethod
    def _threads(cls, v):
        try:
            return parse_threads(v)  # "auto", "", 0 -> None (auto)
        except InvalidRequest as exc:  # its message names the accepted values
            raise ValueError(str(exc)) from None
