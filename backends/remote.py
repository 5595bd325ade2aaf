"""Any OpenAI-compatible server (vLLM, TGI, llama.cpp's server, llama-cpp-python's) as a backend.

The app keeps its UI, monitor, metrics and /v1 in front; the engine does the generation (and the
batching, tensor parallelism, ...). Streams through the engine's SSE; closing the stream closes the
connection, which stops the generation on vLLM/TGI/llama.cpp.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from backends.base import Backend, ChatRequest, LoadedModel, ModelSpec, Progress, TextDelta, _no_progress
from backends.errors import (
    BackendUnavailable,
    Busy,
    ContextLengthExceeded,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    NoModelLoaded,
)

log = logging.getLogger("quantlab.remote")

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 300.0  # between two chunks: long prompts on a busy engine can take a while


def split_source(spec: ModelSpec) -> tuple[str, str]:
    """(base URL, model name). ``source`` may be the model name (with ``api_base`` set) or the base
    URL itself, optionally followed by ``#model-name``."""
    source = (spec.source or "").strip()
    base = (spec.api_base or "").strip()
    model = source
    if source.startswith(("http://", "https://")):
        base, _, model = source.partition("#")
    if not base:
        raise ModelLoadError("The remote backend needs the engine's base URL (e.g. http://host:8000/v1).")
    if not base.startswith(("http://", "https://")):
        raise ModelLoadError(f"{base[:200]!r} is not an http(s) URL.")
    try:
        parts = urlsplit(base)
        parts.port  # noqa: B018 - raises on a bad port
        httpx.URL(base)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ModelLoadError(f"{base[:200]!r} is not a valid URL.") from exc
    if not parts.hostname:
        raise ModelLoadError(f"{base[:200]!r} is not a valid URL.")
    base = base.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return base, model


class RemoteBackend(Backend):
    name = "remote"
    capabilities = frozenset({"stream"})
    quantizations = ("as served",)
    default_quantization = "as served"
    pseudo_quantizations = ("as served",)

    @classmethod
    def remote_base(cls, spec: ModelSpec) -> str | None:
        return split_source(spec)[0]

    def __init__(self, cache_dir=None):
        self._client: httpx.Client | None = None
        self._model = ""
        self._base = ""

    def load(self, spec: ModelSpec, progress: Progress = _no_progress) -> LoadedModel:
        t0 = time.perf_counter()
        base, model = split_source(spec)
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        client = httpx.Client(base_url=base, headers=headers,
                              timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))
        progress(0.3, f"Asking {base} for its models")
        try:
            r = client.get("/models")
            r.raise_for_status()
            served = [m for m in r.json().get("data", []) if isinstance(m, dict)]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            # One answer for every failure (refused, timed out, an error status, not JSON) and none of
            # the target's body: a load must not map ports or read internal services. Details: the log.
            client.close()
            log.warning("remote engine %s: %s", base, _why(exc))
            raise BackendUnavailable(unreachable(base)) from exc
        ids = [str(m.get("id", "")) for m in served]
        if model in ("", "default") and ids:
            model = ids[0]
        if model not in ids:
            client.close()
            raise ModelNotFound(f"The engine at {base} does not serve {model!r}; it serves: {', '.join(ids) or 'nothing'}.")
        info = next(m for m in served if m.get("id") == model)
        self._client, self._model, self._base = client, model, base
        return LoadedModel(
            name=spec.served_name or model,
            backend=self.name,
            quantization="as served",
            source=base,
            context_length=int(info.get("max_model_len") or info.get("context_length") or 0),
            footprint_bytes=0,
            load_seconds=time.perf_counter() - t0,
            device="remote",
            details={"api_base": base, "remote_model": model, "owned_by": info.get("owned_by")},
        )

    def unload(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[TextDelta]:
        if self._client is None:
            raise NoModelLoaded()
        p = request.params
        body = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if p.top_k:
            body["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        if p.seed is not None:
            body["seed"] = p.seed
        counted, usage, finish = 0, None, None
        for attempt in (1, 2):
            try:
                with self._client.stream("POST", "/chat/completions", json=body) as r:
                    if r.status_code >= 400:
                        r.read()
                        _raise_for(r, self._base)
                    for line in r.iter_lines():
                        if cancel.is_set():
                            finish = "cancelled"
                            break
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        try:
                            chunk = json.loads(data)
                        except ValueError as exc:
                            raise BackendUnavailable("The remote engine sent a malformed stream.") from exc
                        if not isinstance(chunk, dict):
                            raise BackendUnavailable("The remote engine sent a malformed stream.")
                        if "error" in chunk:  # its body goes to the log, not to the user (issue 12)
                            log.warning("remote engine %s failed mid-stream: %.300s", self._base, chunk["error"])
                            raise BackendUnavailable("The remote engine failed while generating (details in the server log).")
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        for choice in chunk.get("choices") or []:
                            text = (choice.get("delta") or {}).get("content") or ""
                            if text:
                                counted += 1
                                yield TextDelta(text, tokens=1)
                            finish = choice.get("finish_reason") or finish
                break
            except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
                # A kept-alive connection the engine had already dropped (e.g. after it aborted the
                # previous stream) fails before any byte: one fresh try is safe then, never mid-answer.
                if attempt == 2 or counted or finish is not None:
                    raise BackendUnavailable(f"Lost the remote engine at {self._base}: {_why(exc)}") from exc
            except httpx.HTTPError as exc:
                raise BackendUnavailable(f"Lost the remote engine at {self._base}: {_why(exc)}") from exc
        if finish is None:  # an OpenAI stream always ends with a finish_reason: the engine gave up
            raise BackendUnavailable(
                f"The remote engine closed the stream without finishing ({counted} tokens in); it may have refused "
                "the request, e.g. a conversation longer than its context.")
        extra = max(0, (usage or {}).get("completion_tokens", counted) - counted)
        yield TextDelta("", tokens=extra, finish_reason=finish or "stop",
                        prompt_tokens=(usage or {}).get("prompt_tokens", 0))


def unreachable(base: str) -> str:
    return (f"Remote engine unreachable at {base}: check the URL, that it serves an OpenAI-compatible /v1, "
            "and its API key (details in the server log).")


def _why(exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _raise_for(r: httpx.Response, base: str) -> None:
    """A typed error for the engine's error status; its body goes to the log, never to the user."""
    if r.status_code < 400:
        return
    log.warning("remote engine %s answered %d: %.300s", base, r.status_code, r.text)
    if r.status_code in (401, 403):
        raise BackendUnavailable(unreachable(base))
    if r.status_code == 404:
        raise ModelNotFound("The remote engine no longer serves this model.")
    if r.status_code == 429:
        raise Busy("The remote engine is rate limiting; try again shortly.", retry_after=_retry_after(r))
    if r.status_code in (400, 413, 422):
        if "context" in r.text.lower() or "too long" in r.text.lower():
            raise ContextLengthExceeded("The conversation does not fit the remote engine's context: shorten it.")
        raise InvalidRequest(f"The remote engine rejected the request ({r.status_code}).")
    raise BackendUnavailable(f"The remote engine at {base} failed ({r.status_code}).")


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return float(r.headers.get("retry-after", ""))
    except ValueError:
        return None
