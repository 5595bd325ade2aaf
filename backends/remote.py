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

from backends.base import (
    Backend,
    ChatRequest,
    LoadedModel,
    Message,
    ModelSpec,
    Progress,
    TextDelta,
    TokenLogprob,
    _no_progress,
)
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
READ_TIMEOUT_S = 300.0  # streams, between two chunks: long prompts on a busy engine can take a while
MAX_MODELS_BYTES = 4 * 2**20  # the engine's /models answer: more is not a model list


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


def configured_bases(spec: ModelSpec) -> tuple[str, ...]:
    """The engine base URLs a server's own settings name: ``--api-base`` and, with ``--backend
    remote``, a ``--model http://host/v1#name``. Only these get ``--remote-api-key``."""
    bases = []
    candidates = [spec.with_(source="")] if spec.api_base else []
    if spec.backend == "remote":
        candidates.append(spec)
    for candidate in candidates:
        try:
            bases.append(split_source(candidate)[0])
        except ModelLoadError:
            pass
    return tuple(bases)


def _context_length(info: dict) -> int:
    """The context length a /models entry reports (vLLM's ``max_model_len``, else ``context_length``;
    0 = not said), or ModelLoadError ending the sentence "The engine at <url> ..." when it is not a
    whole number (the value itself is not echoed: it is the target's text)."""
    for key in ("max_model_len", "context_length"):
        value = info.get(key)
        if value is None or value == "" or value == 0:
            continue
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, float) and value.is_integer() and 0 < value < 2**63:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
            raise ModelLoadError(f"reports a {key} that is not a positive whole number: it does not look like an "
                                 "OpenAI-compatible engine.")
        return value
    return 0


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
            served = _served_models(client, spec.remote_timeout)
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
            # what the engine serves stays in the log: an error never echoes the target's answer
            log.warning("remote engine %s does not serve %r; it serves: %.500s", base, model, ", ".join(ids))
            raise ModelNotFound(f"The engine at {base} does not serve {model[:200]!r} ({len(ids)} model"
                                f"{'s' if len(ids) != 1 else ''} served; see its /v1/models or the server log).")
        info = next(m for m in served if m.get("id") == model)
        try:
            context_length = _context_length(info)
        except ModelLoadError as exc:
            client.close()
            raise ModelLoadError(f"The engine at {base} {exc}") from None
        self._client, self._model, self._base = client, model, base
        return LoadedModel(
            name=spec.served_name or model,
            backend=self.name,
            quantization="as served",
            source=base,
            context_length=context_length,
            footprint_bytes=0,
            load_seconds=time.perf_counter() - t0,
            device="remote",
            details={"api_base": base, "remote_model": model,
                     "owned_by": str(info.get("owned_by"))[:100] if info.get("owned_by") is not None else None},
        )

    def unload(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    # The OpenAI API's own samplers, and the extensions vLLM, llama.cpp's server and llama-cpp-python's
    # all take under these names. DRY, XTC and no_repeat_ngram_size are not common: refused by name.
    samplers = frozenset({"presence_penalty", "frequency_penalty", "min_p", "typical_p", "mirostat"})
    features = frozenset({"prompt", "tools", "constraint", "logprobs"})

    @classmethod
    def check_request(cls, request: ChatRequest) -> None:
        super().check_request(request)
        if request.constraint is not None and request.constraint.kind == "grammar":
            raise InvalidRequest("The remote backend takes JSON constraints (response_format), not grammars.",
                                 "response_format")

    def request_body(self, request: ChatRequest) -> tuple[str, dict]:
        """(path, body) of the engine request: /completions for a raw prompt, else /chat/completions."""
        p = request.params
        body: dict = {"model": self._model, "max_tokens": p.max_new_tokens, "temperature": p.temperature,
                      "top_p": p.top_p, "stream": True, "stream_options": {"include_usage": True}}
        if p.top_k:
            body["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        if p.seed is not None:
            body["seed"] = p.seed
        for name in p.samplers_set():
            body[name] = getattr(p, name)
        if p.mirostat:
            body.update(mirostat_mode=p.mirostat, mirostat_tau=p.mirostat_tau, mirostat_eta=p.mirostat_eta)
        c = request.constraint
        if c is not None:
            body["response_format"] = ({"type": "json_object"} if c.kind == "json_object" else
                                       {"type": "json_schema", "json_schema": {"name": "response",
                                                                                "schema": json.loads(c.schema)}})
        if request.prompt is not None:
            body["prompt"] = request.prompt
            if request.logprobs is not None:
                body["logprobs"] = request.logprobs
            return "/completions", body
        body["messages"] = [_message(m) for m in request.messages]
        if request.tools:
            body["tools"] = list(request.tools)
        if request.template_kwargs:
            body["chat_template_kwargs"] = dict(request.template_kwargs)
        if request.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = request.logprobs
        return "/chat/completions", body

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[TextDelta]:
        if self._client is None:
            raise NoModelLoaded()
        path, body = self.request_body(request)
        counted, usage, finish = 0, None, None
        calls: dict[int, dict] = {}  # streamed tool calls, by index
        for attempt in (1, 2):
            try:
                with self._client.stream("POST", path, json=body) as r:
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
                            if not isinstance(choice, dict):
                                raise BackendUnavailable("The remote engine sent a malformed stream.")
                            delta = choice.get("delta") or {}
                            text = choice.get("text") if "text" in choice else delta.get("content")
                            text = text if isinstance(text, str) else ""
                            _collect_calls(delta.get("tool_calls"), calls)
                            lps = _logprobs(choice.get("logprobs"))
                            if text or lps:
                                counted += max(1, len(lps))
                                yield TextDelta(text, tokens=max(1, len(lps)), logprobs=lps)
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
        if calls:  # as the Hermes text the /v1 layer parses (one tool-call format for every backend)
            yield TextDelta("".join(_call_text(c) for _, c in sorted(calls.items())))
        if finish == "tool_calls":
            finish = "stop"
        extra = max(0, (usage or {}).get("completion_tokens", counted) - counted)
        yield TextDelta("", tokens=extra, finish_reason=finish or "stop",
                        prompt_tokens=(usage or {}).get("prompt_tokens", 0))


def _served_models(client: httpx.Client, timeout_s: float) -> list[dict]:
    """The engine's /models list, within ``timeout_s`` in all (connect, each read, and the whole
    answer: an engine that accepts and never answers, or trickles, fails the load, not holds it) and
    at most MAX_MODELS_BYTES."""
    deadline = time.monotonic() + timeout_s
    timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
    body = bytearray()
    with client.stream("GET", "/models", timeout=timeout) as r:
        r.raise_for_status()
        for part in r.iter_bytes():
            body += part
            if len(body) > MAX_MODELS_BYTES:
                raise ValueError("the model list is too large")
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the model list took too long")
    data = json.loads(bytes(body)).get("data", [])
    if not isinstance(data, list):
        raise ValueError("no model list")
    return [m for m in data if isinstance(m, dict)]


def _message(m: Message) -> dict:
    out: dict = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = list(m.tool_calls)
        out["content"] = m.content or None
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.name and m.role == "tool":
        out["name"] = m.name
    return out


def _collect_calls(deltas: object, calls: dict[int, dict]) -> None:
    """Accumulate streamed tool-call deltas ({index, function: {name, arguments (a piece)}})."""
    if not isinstance(deltas, list):
        return
    for d in deltas:
        if not isinstance(d, dict):
            continue
        fn = d.get("function") or {}
        call = calls.setdefault(int(d.get("index") or 0), {"name": "", "arguments": ""})
        call["name"] += fn.get("name") or ""
        call["arguments"] += fn.get("arguments") or ""


def _call_text(call: dict) -> str:
    try:
        args = json.loads(call["arguments"] or "{}")
    except ValueError:
        args = call["arguments"]  # not JSON: the /v1 layer then shows it as text, never as a call
    return f"<tool_call>{json.dumps({'name': call['name'], 'arguments': args}, ensure_ascii=False)}</tool_call>"


def _logprobs(lp: object) -> tuple[TokenLogprob, ...]:
    """A chunk's logprobs, chat shape ({"content": [...]}) or legacy completions shape."""
    if not isinstance(lp, dict):
        return ()
    try:
        if isinstance(lp.get("content"), list):
            return tuple(TokenLogprob(t["token"], float(t["logprob"]), bytes(t.get("bytes") or b""),
                                      tuple((a["token"], float(a["logprob"])) for a in t.get("top_logprobs") or ()))
                         for t in lp["content"])
        tops = lp.get("top_logprobs") or [None] * len(lp.get("tokens") or ())
        return tuple(TokenLogprob(tok, float(p) if p is not None else float("-inf"),
                                  top=tuple((k, float(v)) for k, v in (top or {}).items()))
                     for tok, p, top in zip(lp.get("tokens") or (), lp.get("token_logprobs") or (), tops))
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendUnavailable("The remote engine sent malformed logprobs.") from exc


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
