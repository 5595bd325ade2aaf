"""Plain functions that the UI and the Gradio API both call: primitives in, primitives out.

They raise typed BackendErrors; ``ui/edge.py`` turns those into ``gr.Error`` (the one Gradio edge).
Nothing here imports gradio, torch or llama_cpp.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams
from backends.errors import BackendError, InvalidRequest
from backends.manager import ModelManager
from optimization import quantize
from optimization.lab import DEFAULT_REFERENCE, Lab
from optimization.memory import MemoryMonitor
from serving.ratelimit import RateLimiter

# A streamed reply is sent to the browser at most this often (each Gradio chunk carries the whole
# value, so one update per token costs O(n^2) bytes on long replies). The first token goes at once.
STREAM_INTERVAL_S = 0.04
MAX_MESSAGE_CHARS = 200_000


def text_of(content: Any) -> str:
    """Message content as plain text: Gradio 6 sends a list of {"type": "text", "text": ...} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(text_of(part) for part in content if not isinstance(part, dict) or part.get("type", "text") == "text")
    return str(content)


def normalize_history(history: Any) -> list[Message]:
    """Chatbot/OpenAI-style history -> Messages. Tolerates None, [] and tuple pairs."""
    if not history:
        return []
    if not isinstance(history, (list, tuple)):
        raise InvalidRequest("history must be a list of {role, content} messages.", "history")
    out: list[Message] = []
    for item in history:
        if isinstance(item, dict):
            if (item.get("metadata") or {}).get("title"):
                continue  # UI annotations (the stats line under a reply) are not conversation
            role = item.get("role")
            if role not in ("user", "assistant", "system"):
                raise InvalidRequest(f"Unknown role {role!r} in history.", "history")
            text = text_of(item.get("content"))
            if text or role == "user":
                out.append(Message(role, text))
        elif isinstance(item, (list, tuple)) and len(item) == 2:  # [user, assistant] pairs
            if item[0]:
                out.append(Message("user", text_of(item[0])))
            if item[1]:
                out.append(Message("assistant", text_of(item[1])))
        else:
            raise InvalidRequest("history must be a list of {role, content} messages.", "history")
    return out


def build_request(message: str, history: Any, system_prompt: str, max_new_tokens: float, temperature: float,
                  top_p: float, top_k: float, repetition_penalty: float, seed: float | None) -> ChatRequest:
    message = text_of(message)
    if not message.strip():
        raise InvalidRequest("The message is empty: type something to send.", "message")
    if len(message) > MAX_MESSAGE_CHARS:
        raise InvalidRequest(f"The message is {len(message):,} characters; the limit is {MAX_MESSAGE_CHARS:,}.", "message")
    messages = []
    if system_prompt and system_prompt.strip():
        messages.append(Message("system", system_prompt.strip()))
    messages += [m for m in normalize_history(history) if m.role != "system" or not messages]
    messages.append(Message("user", message))
    params = SamplingParams(
        max_new_tokens=_int(max_new_tokens, "max_new_tokens"),
        temperature=_num(temperature, "temperature"),
        top_p=_num(top_p, "top_p"),
        top_k=_int(top_k, "top_k"),
        repetition_penalty=_num(repetition_penalty, "repetition_penalty"),
        seed=None if seed is None or seed == "" else _int(seed, "seed"),
    ).validated()
    return ChatRequest(tuple(messages), params)


def _num(v: Any, name: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{name} must be a number, got {v!r}.", name) from None
    if f != f or f in (float("inf"), float("-inf")):
        raise InvalidRequest(f"{name} must be a finite number.", name)
    return f


def _int(v: Any, name: str) -> int:
    f = _num(v, name)
    if f != int(f):
        raise InvalidRequest(f"{name} must be a whole number, got {v!r}.", name)
    return int(f)


class Handlers:
    """The operations of the app, bound to one ModelManager."""

    def __init__(self, manager: ModelManager, monitor: MemoryMonitor | None = None,
                 limiter: RateLimiter | None = None, stream_interval_s: float = STREAM_INTERVAL_S,
                 lab: Lab | None = None, spec_defaults: dict | None = None):
        self.manager = manager
        self.spec_defaults = spec_defaults or {}
        self.monitor = monitor
        self.lab = lab or Lab(manager, monitor)
        self.limiter = limiter or RateLimiter()
        self.stream_interval_s = stream_interval_s

    # --- chat ------------------------------------------------------------------------------------

    def chat(self, message: str, history: Any, system_prompt: str = "", max_new_tokens: float = 512,
             temperature: float = 0.7, top_p: float = 0.95, top_k: float = 40, repetition_penalty: float = 1.0,
             seed: float | None = -1, endpoint: str = "chat", client: str | None = None) -> Iterator[tuple[str, dict]]:
        """Yield (growing reply, stats). Stats are {} until the final item, which carries the
        request's timing and token counts."""
        t0 = time.perf_counter()
        request = build_request(message, history, system_prompt, max_new_tokens, temperature, top_p, top_k,
                                repetition_penalty, seed)
        cancel = threading.Event()
        with self.limiter.slot(client):
            gen = self.manager.stream(request, cancel, endpoint=endpoint, t0=t0, client=client)
            reply = ""
            last_sent = 0.0
            sent_any = False
            try:
                for delta in gen:
                    reply += delta.text
                    now = time.perf_counter()
                    if delta.text and (not sent_any or now - last_sent >= self.stream_interval_s):
                        last_sent, sent_any = now, True
                        yield reply, {}
            finally:
                cancel.set()  # the client went away (GeneratorExit) or we are done: stop the model
                gen.close()
        yield reply, gen.stats.as_dict()

    # --- models ----------------------------------------------------------------------------------

    def load_steps(self, model: str, backend: str, quantization: str | None,
                   **options: Any) -> Iterator[tuple[float, str]]:
        """Yield (fraction, status line) while loading; the last line says what was loaded."""
        spec = self.manager.validate(ModelSpec(source=(model or "").strip(), backend=(backend or "").strip(),
                                               quantization=quantization, **{**self.spec_defaults, **options}))
        updates: queue.Queue = queue.Queue()
        result: dict[str, Any] = {}

        def progress(fraction: float, text: str) -> None:
            updates.put((fraction, text))

        def run() -> None:
            try:
                result["info"] = self.manager.load(spec, progress)
            except BaseException as exc:  # re-raised below, on the caller's thread
                result["error"] = exc
            finally:
                updates.put(None)

        threading.Thread(target=run, name="load-model", daemon=True).start()
        yield 0.0, f"Loading {spec.source} ({spec.backend}, {spec.quantization})…"
        while (item := updates.get()) is not None:
            fraction, text = item
            yield fraction, f"{int(fraction * 100)}% · {text}"
        if "error" in result:
            raise result["error"]
        info = result["info"]
        yield 1.0, (f"Loaded {info.name} · {info.backend} · {info.quantization} · "
               f"{info.footprint_bytes / 2**20:.0f} MiB · {info.load_seconds:.1f} s · {info.device}")

    def unload_model(self) -> str:
        info = self.manager.unload()
        return f"Unloaded {info.name}." if info else "No model was loaded."

    def model_status(self) -> dict:
        return self.manager.status()

    def stats(self, last: int = 50) -> dict:
        """Memory (process, system, GPUs, the loaded model) and the latency of the last requests."""
        recent = [s.as_dict() for s in self.manager.metrics.recent(last)]
        done = [r for r in recent if r["outcome"] == "ok"]
        cur = self.manager.current
        return {
            "memory": self.monitor.latest() if self.monitor else None,
            "model": cur.as_dict() if cur else None,
            "state": self.manager.state,
            "requests": {
                "running": self.manager.metrics.running,
                "waiting": self.manager.metrics.waiting,
                "total": self.manager.metrics.total,
                "ttft_p50_s": _percentile([r["ttft_s"] for r in done if r["ttft_s"] is not None], 50),
                "tpot_p50_s": _percentile([r["tpot_s"] for r in done if r["tpot_s"] is not None], 50),
                "tokens_per_s_p50": _percentile([r["tokens_per_s"] for r in done if r["tokens_per_s"]], 50),
            },
            "recent": recent,
        }

    # --- downloaded and derived models -----------------------------------------------------------

    def cached_models(self) -> list[dict]:
        """Models in the Hugging Face cache and this app's derived models (GGUF variants, derived
        checkpoints), most recently used first."""
        from backends import hub_cache

        return hub_cache.list_cached(self._cache_dir())

    def delete_cached(self, item_id: str) -> str:
        """Delete one cached model by its id (from ``cached_models``). Refuses the loaded model's
        folder and deletes nothing while a model is loading."""
        from backends import hub_cache

        if self.manager.loading is not None:
            raise InvalidRequest("A model is loading: delete cached models once it has finished.", "item_id")
        cur = self.manager.current
        in_use = [cur.source] if cur is not None and cur.backend != "remote" else []
        item = hub_cache.delete_cached(item_id, self._cache_dir(), in_use=in_use)
        return f"Deleted {item['id']} ({item['size_bytes'] / 2**20:.1f} MiB freed)."

    def _cache_dir(self):
        from backends.sources import default_cache_dir

        return self.manager.cache_dir or default_cache_dir()

    @staticmethod
    def quantizations(backend: str) -> list[str]:
        return list(quantize.MENU.get(backend, ()))

    # --- quantization lab ------------------------------------------------------------------------

    def compare(self, prompt: str, variants: Any, model: str = "embedded", max_new_tokens: float = 128,
                temperature: float = 0.0, seed: float | None = 0) -> Iterator[list[dict]]:
        """Yield every variant's {variant, text, done, stats, footprint_mib} as they stream."""
        params = SamplingParams(max_new_tokens=_int(max_new_tokens, "max_new_tokens"),
                                temperature=_num(temperature, "temperature"), top_p=1.0, top_k=0,
                                seed=None if seed is None else _int(seed, "seed"))
        yield from self.lab.compare((model or "embedded").strip(), variants, text_of(prompt), params)

    def release_lab(self) -> str:
        n = self.lab.release()
        return f"Unloaded {n} compared variant{'s' if n != 1 else ''}." if n else "No compared variant was loaded."

    def evaluate(self, variants: Any, text_path: str | None = None, max_tokens: float = 1024,
                 model: str = "embedded", reference: str = DEFAULT_REFERENCE, window: float = 256,
                 progress=lambda f, m: None) -> list[dict]:
        rows = self.lab.evaluate((model or "embedded").strip(), variants, reference or DEFAULT_REFERENCE,
                                 text_path or None, _int(max_tokens, "max_tokens"), _int(window, "window"),
                                 progress=progress)
        return [r.as_dict() for r in rows]


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def user_message(exc: BaseException) -> str:
    """The sentence shown for an error (typed errors carry their own)."""
    if isinstance(exc, BackendError):
        return str(exc)
    return f"Internal error ({type(exc).__name__}). The server is still running; see its log for details."
