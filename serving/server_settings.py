"""Server settings: where and how the app serves (bind address, access, limits, logs, storage).

One half of ``serving.settings.Settings`` (the other is ``serving.model_settings``); the CLI flags are
generated from both. ``create_app`` wires the server from this half.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backends.files.sources import default_cache_dir
from serving.requests import MAX_EMBED_TOKENS, MAX_MESSAGE_CHARS, RequestLimits
from serving.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGES, ImageLimits


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUANTLAB_", extra="ignore")

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
    max_image_bytes: int = Field(MAX_IMAGE_BYTES, ge=1024, description="largest picture in a request, in bytes "
                                 "(encoded); larger ones are refused before they are decoded")
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, ge=1, description="largest picture in a request, in pixels "
                                  "(width x height, read from its header before decoding: no decompression bombs)")
    max_images: int = Field(MAX_IMAGES, ge=0, description="most pictures in one request (the whole conversation)")
    allow_remote_images: bool = Field(False, description="fetch image_url parts given as http(s) URLs (public "
                                      "addresses only, never this server's network); off: data URLs only")
    allow_remote: Annotated[list[str], NoDecode] = Field(default_factory=list, description="with --listen: base URLs (PREFIX ...) the "
                                    "remote backend may use, e.g. http://gpu-box:8000/v1; none by default")
    load_drain_timeout: float = Field(300.0, ge=0, description="on /load_model, seconds the replaced model gets to "
                                      "finish the replies it is running (new requests already go to the new model); "
                                      "replies still running then end with an error")
    memory_budget_mib: int = Field(0, ge=0, description="most memory (MiB) the loaded models may take together; a "
                                   "/load_model whose estimate (weights + KV at n_ctx x parallel + overhead) does not fit "
                                   "it, or the free memory, is refused (0 = the free memory alone)")
    monitor_interval: float = Field(1.0, description="seconds between memory/CPU/GPU samples")
    fit: str | None = Field(None, description="fit advisor: print which GGUF weight x KV cache types of --model fit this "
                            "memory budget (MiB, a size such as 6GiB, or 'auto' = this machine's free memory) at "
                            "--n-ctx x --parallel, then serve the recommended pair")
    fit_only: bool = Field(False, description="with --fit: print the table and exit (load nothing)")

    @field_validator("allow_remote", mode="before")
    @classmethod
    def _prefixes(cls, v):
        if isinstance(v, str):  # QUANTLAB_ALLOW_REMOTE="http://a:8000 http://b:8000" (or a JSON list)
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [p for p in v.replace(",", " ").split() if p]
        return v

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, v):
        if isinstance(v, str) and v.strip()[-1:].lower() in ("s", "m", "h"):
            v = v.strip()
            return float(v[:-1]) * {"s": 1, "m": 60, "h": 3600}[v[-1].lower()]
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 0 <= v <= 65535:
            raise ValueError("port must be 0-65535")
        return v

    @property
    def pool_enabled(self) -> bool:
        """Whether --models-dir was given (flag or environment): the server then serves its models by name."""
        return "models_dir" in self.model_fields_set

    @property
    def bind_host(self) -> str:
        return "0.0.0.0" if self.listen else self.host

    @property
    def exposed(self) -> bool:
        return self.bind_host not in ("127.0.0.1", "localhost", "::1")

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(self.max_prompt_chars, self.max_prompt_tokens, self.max_embed_tokens,
                             ImageLimits(self.max_image_bytes, self.max_image_pixels, self.max_images,
                                         self.allow_remote_images))
