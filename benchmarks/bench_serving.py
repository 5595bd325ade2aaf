#!/usr/bin/env python
"""Serving overhead benchmark: the raw engine vs the app (Gradio /chat and OpenAI /v1), in ONE run.

    python benchmarks/bench_serving.py                      # llama.cpp, 5 requests/path, 128 tokens, 1,4,8 clients
    python benchmarks/bench_serving.py --short              # CI smoke: 2 requests, 32 tokens, 1,2 clients
    python benchmarks/bench_serving.py --full               # adds 16 concurrent clients
    python benchmarks/bench_serving.py --backend transformers

Same model, same prompts, greedy decoding on every path. Phases run one after the other (never two
at once, so they do not share the CPU): RAW engine in-process -> the real app (create_app + uvicorn
in a thread, as tests/conftest.py's LiveServer) with the same model -> Gradio /chat through
gradio_client -> /v1/chat/completions through the openai client -> a /v1 concurrency sweep.

Definitions (DESIGN.md section 2, vLLM's bench): TTFT = request sent -> first non-empty text seen by
the client; TPOT = (latency - TTFT) / (output tokens - 1); decode tok/s = (output tokens - 1) /
(latency - TTFT) = 1 / TPOT. Output tokens are the server's count (stats / usage), never a count of
chunks, except on the raw path (one chunk per token, see README). A path's tok/s and TTFT are the
medians over its requests (robust to a burst of outside load on a shared machine; the pooled mean is
in the JSON too). Ratios and differences are between paths measured in this run only; nothing here
asserts on absolute times.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")

SYSTEM_PROMPT = "You are a helpful assistant."
WARMUP_PROMPT = "Say hello and introduce yourself in one sentence."
# Open-ended prompts, so greedy replies tend to run to max_tokens (equal lengths across requests).
PROMPTS = (
    "Explain in detail why the sky is blue during the day and red at sunset.",
    "Write a long story about a robot who learns to paint in a small seaside town.",
    "Give a detailed list of tips for staying productive when working from home.",
    "Describe step by step how a bicycle works, from the pedals to the wheels.",
    "Compare cats and dogs as pets: temperament, care, costs and lifestyle fit.",
)

# The issue's goals, and what the plain alternatives reach on these machines (DESIGN.md section 5).
GOAL_TOK_S_RATIO = 0.95
GOAL_TTFT_ADDED_MS = 50.0
GOAL_SCALING = {"llamacpp": {8: 2.5}, "transformers": {8: 4.0}}  # aggregate tok/s at N clients / at 1 client
REFERENCE = {
    "app_gradio": "plain Gradio app: 0.87, +110 ms",
    "app_rest": "",
    "app_v1": "llama-cpp-python server: 0.87, +7 ms",
}

PATHS = ("raw", "app_gradio", "app_rest", "app_v1")
PATH_LABELS = {"raw": "raw engine", "app_gradio": "app /chat (gradio_client)", "app_rest": "app /chat (REST SSE)",
               "app_v1": "app /v1 (openai SSE)"}
APP_PATHS = PATHS[1:]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- measurements ------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One streamed request, timed on the client side (perf_counter seconds from the send)."""

    prompt_index: int
    ttft_s: float
    latency_s: float
    tokens: int
    text: str = field(default="", repr=False)
    server: dict | None = None  # the app's own stats for this request (TTFT, tok/s, queue wait)

    @property
    def decode_s(self) -> float:
        return self.latency_s - self.ttft_s

    @property
    def tpot_s(self) -> float | None:
        return self.decode_s / (self.tokens - 1) if self.tokens > 1 else None

    @property
    def tok_s(self) -> float | None:
        return (self.tokens - 1) / self.decode_s if self.tokens > 1 and self.decode_s > 0 else None

    def as_dict(self) -> dict:
        d = {"prompt_index": self.prompt_index, "ttft_ms": round(self.ttft_s * 1000, 3),
             "latency_s": round(self.latency_s, 4), "tokens": self.tokens,
             "tpot_ms": None if self.tpot_s is None else round(self.tpot_s * 1000, 3),
             "decode_tok_s": None if self.tok_s is None else round(self.tok_s, 3), "chars": len(self.text)}
        if self.server is not None:
            d["server"] = {k: self.server.get(k) for k in ("ttft_s", "tokens_per_s", "queue_wait_s", "e2e_s",
                                                           "prompt_tokens", "completion_tokens", "finish_reason")}
        return d


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    k = (len(vals) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def summarize(samples: list[Sample]) -> dict:
    usable = [s for s in samples if s.tokens > 1 and s.decode_s > 0]
    pooled = (sum(s.tokens - 1 for s in usable) / sum(s.decode_s for s in usable)) if usable else None
    ttfts = [s.ttft_s * 1000 for s in samples]
    return {
        "requests": len(samples),
        "tokens_total": sum(s.tokens for s in samples),
        "tokens_mean": statistics.fmean(s.tokens for s in samples) if samples else 0,
        "decode_tok_s": percentile([s.tok_s for s in usable], 50),  # median over requests: the one the ratios use
        "decode_tok_s_pooled": pooled,
        "decode_tok_s_per_request": [s.tok_s for s in samples],
        # single-stream output throughput including TTFT: sum(tokens) / sum(latency)
        "output_tok_s": (sum(s.tokens for s in samples) / sum(s.latency_s for s in samples)) if samples else None,
        "ttft_ms_p50": percentile(ttfts, 50),
        "ttft_ms_mean": statistics.fmean(ttfts) if ttfts else None,
        "ttft_ms_min": min(ttfts) if ttfts else None,
        "tpot_ms_p50": percentile([s.tpot_s * 1000 for s in samples if s.tpot_s is not None], 50),
        "latency_s_mean": statistics.fmean(s.latency_s for s in samples) if samples else None,
        "server_ttft_ms_p50": percentile([s.server["ttft_s"] * 1000 for s in samples
                                          if s.server and s.server.get("ttft_s") is not None], 50),
        "samples": [s.as_dict() for s in samples],
    }


class RssSampler:
    """A process's RSS (this one by default): named snapshots plus the peak, sampled in a thread."""

    def __init__(self, pid: int | None = None, interval: float = 0.2, snapshots: dict | None = None):
        import psutil

        self._proc = psutil.Process(pid)
        self.interval = interval
        self.snapshots: dict[str, int] = {} if snapshots is None else snapshots
        self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        return self._proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, self.rss())
            except Exception:  # noqa: BLE001 - the watched process ended
                return

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def mark(self, name: str) -> int:
        gc.collect()
        value = self.rss()
        self.peak = max(self.peak, value)
        self.snapshots[name] = value
        log(f"RSS {name}: {value / 2**20:.0f} MiB")
        return value

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def messages_for(prompt: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


def schedule(n: int) -> list[int]:
    """Prompt indexes for n measured requests: the same sequence on every path."""
    return [i % len(PROMPTS) for i in range(n)]


# --- RAW engines -------------------------------------------------------------------------------------


class RawLlamaCpp:
    """llama-cpp-python directly, as a user of the library would call it."""

    def __init__(self, model_path: Path, n_ctx: int, n_threads: int):
        from backends.llamacpp_open import open_llama

        # n_threads_batch as the app's engine uses it (llama-cpp-python would default it to every CPU,
        # which gives the raw path a faster prefill than the app's whenever --threads < CPUs); the
        # same model parameters as the app (no AMX buffers where llama.cpp crashes in them)
        self.llm = open_llama(str(model_path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                         verbose=False)

    def run(self, prompt_index: int, prompt: str, max_tokens: int) -> Sample:
        t0 = time.perf_counter()
        first, tokens, text = None, 0, []
        stream = self.llm.create_chat_completion(messages_for(prompt), stream=True, max_tokens=max_tokens,
                                                 temperature=0.0)
        for chunk in stream:
            content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if content:
                if first is None:
                    first = time.perf_counter()
                tokens += 1  # llama-cpp-python streams one chunk per generated token (no stop strings)
                text.append(content)
        end = time.perf_counter()
        if first is None:
            raise RuntimeError(f"raw llama.cpp produced no text for prompt {prompt_index}")
        return Sample(prompt_index, first - t0, end - t0, tokens, "".join(text))

    def close(self) -> None:
        self.llm.close()
        self.llm = None


class RawTransformers:
    """HF generate() with a TextIteratorStreamer, in a thread, at the dtype the app loads (bf16)."""

    def __init__(self, checkpoint: Path, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(str(checkpoint))
        self.model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=getattr(torch, dtype),
                                                          device_map="cpu")
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos if eos is not None else self.tok.eos_token_id]
        self.eos = [e for e in eos if e is not None]

    def run(self, prompt_index: int, prompt: str, max_tokens: int) -> Sample:
        from transformers import TextIteratorStreamer

        torch, eos = self.torch, self.eos
        ids = self.tok.apply_chat_template(messages_for(prompt), add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        marks: dict = {"first": None, "tokens": 0}

        class CountingStreamer(TextIteratorStreamer):
            """Records when the first generated token exists and counts tokens (the text queue
            itself releases whole words, so counting its pieces would undercount tokens)."""

            def put(self, value):
                if not self.next_tokens_are_prompt:
                    new = [t for t in value.reshape(-1).tolist() if t not in eos]
                    if new and marks["first"] is None:
                        marks["first"] = time.perf_counter()
                    marks["tokens"] += len(new)
                super().put(value)

        streamer = CountingStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def generate():
            try:
                with torch.inference_mode():
                    self.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                                        max_new_tokens=max_tokens, do_sample=False, temperature=None, top_p=None,
                                        top_k=None, streamer=streamer, eos_token_id=eos, pad_token_id=eos[0])
            except BaseException as exc:  # re-raised below: a TextIteratorStreamer would wait forever
                errors.append(exc)
                streamer.end()

        t0 = time.perf_counter()
        worker = threading.Thread(target=generate, name="raw-hf-generate", daemon=True)
        worker.start()
        text = "".join(streamer)
        end = time.perf_counter()
        worker.join()
        if errors:
            raise errors[0]
        if marks["first"] is None:
            raise RuntimeError(f"raw transformers produced no tokens for prompt {prompt_index}")
        return Sample(prompt_index, marks["first"] - t0, end - t0, marks["tokens"], text)

    def close(self) -> None:
        self.model = self.tok = None


# --- the app -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """The real app (create_app: FastAPI + Gradio + /v1) under uvicorn in a thread of this process,
    like tests/conftest.py's LiveServer (replicated so the benchmark does not import pytest)."""

    def __init__(self, n_ctx: int, n_threads: int | None):
        import uvicorn

        from app import create_app
        from serving.settings import Settings

        self.settings = Settings(port=free_port(), host="127.0.0.1", no_model=True, n_ctx=n_ctx, n_threads=n_threads,
                                 request_log="", auth=None, api_key=None, rate_limit_rpm=0,
                                 max_streams_per_client=0)
        self.app = create_app(self.settings)
        self.manager = self.app.state.manager
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.settings.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = f"http://127.0.0.1:{self.settings.port}"

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the app did not start")
            time.sleep(0.05)
        return self

    def load(self, spec) -> dict:
        info = self.manager.load(spec)
        return {"name": info.name, "backend": info.backend, "quantization": info.quantization,
                "device": info.device, "details": info.details}

    @property
    def pid(self) -> int:
        return os.getpid()

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        try:
            self.manager.unload()
        except Exception:  # noqa: BLE001 - best effort at the end of a benchmark
            pass


class AppSubprocess:
    """``python app.py`` in its own process (--app-mode subprocess): the clients of this benchmark then
    share no GIL with the server, as in a deployment. The model is the one the command line names."""

    def __init__(self, args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port),
                    "--request-log", "", "--n-ctx", str(args.n_ctx), "--backend", args.backend,
                    "--model", args.model or "embedded"]
        self.cmd += ["--parallel", str(args.parallel)]
        if args.backend == "llamacpp":
            self.cmd += ["--n-threads", str(args.threads)]
        else:
            self.cmd += ["--quantization", args.dtype]
        self.proc = None
        self._log = None

    def __enter__(self) -> AppSubprocess:
        import tempfile

        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def load(self, spec) -> dict:
        """Wait for /health to say ready (the app loads --model in the background at start)."""
        import httpx

        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self._tail()}")
            try:
                r = httpx.get(f"{self.url}/health", timeout=5)
                body = r.json()
                if r.status_code == 200:
                    m = body["model"]
                    return {k: m.get(k) for k in ("name", "backend", "quantization", "device", "details")}
                if body.get("last_error"):
                    raise RuntimeError(f"the app could not load the model: {body['last_error']}")
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the app was not ready within 600 s:\n{self._tail()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _tail(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-3000:]

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # app.py drains and exits 0 on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def gradio_request(client, prompt_index: int, prompt: str, max_tokens: int) -> Sample:
    t0 = time.perf_counter()
    job = client.submit(prompt, [], SYSTEM_PROMPT, max_tokens, 0.0, 1.0, 0, 1.0, 0, api_name="/chat")
    first, last = None, None
    for out in job:
        reply = out[0] if isinstance(out, (list, tuple)) else out
        if first is None and reply:
            first = time.perf_counter()
        last = out
    end = time.perf_counter()
    final = job.result()
    reply, stats = (final[0], final[1]) if isinstance(final, (list, tuple)) else (final, None)
    if not stats and isinstance(last, (list, tuple)):
        stats = last[1]
    if first is None or not stats:
        raise RuntimeError(f"/chat returned no text or no stats for prompt {prompt_index}: {final!r:.200}")
    return Sample(prompt_index, first - t0, end - t0, int(stats["completion_tokens"]), reply, server=stats)


def rest_request(http, prompt_index: int, prompt: str, max_tokens: int) -> Sample:
    """The same /chat endpoint over Gradio's documented REST API (POST /gradio_api/call/chat, then its SSE
    stream), read as it arrives: what a browser or curl sees, without gradio_client's polling loops
    (it checks for new SSE messages every 50 ms)."""
    t0 = time.perf_counter()
    data = [prompt, [], SYSTEM_PROMPT, max_tokens, 0.0, 1.0, 0, 1.0, 0]
    event_id = http.post("/gradio_api/call/chat", json={"data": data}).raise_for_status().json()["event_id"]
    first, final, event = None, None, None
    with http.stream("GET", f"/gradio_api/call/chat/{event_id}") as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event in ("generating", "complete"):
                value = json.loads(line[5:])
                if first is None and value and value[0]:
                    first = time.perf_counter()
                if event == "complete":
                    final = value
            elif line.startswith("data:") and event == "error":
                raise RuntimeError(f"/chat over REST failed: {line[5:]:.200}")
    end = time.perf_counter()
    if first is None or not final or not final[1]:
        raise RuntimeError(f"/chat over REST returned no text or no stats for prompt {prompt_index}")
    stats = final[1]
    return Sample(prompt_index, first - t0, end - t0, int(stats["completion_tokens"]), final[0], server=stats)


def v1_request(oai, model: str, prompt_index: int, prompt: str, max_tokens: int) -> Sample:
    t0 = time.perf_counter()
    stream = oai.chat.completions.create(model=model, messages=messages_for(prompt), stream=True, max_tokens=max_tokens,
                                         temperature=0.0, seed=0, stream_options={"include_usage": True})
    first, usage, text = None, None, []
    for chunk in stream:
        if chunk.choices:
            content = chunk.choices[0].delta.content
            if content:
                if first is None:
                    first = time.perf_counter()
                text.append(content)
        if chunk.usage is not None:
            usage = chunk.usage
    end = time.perf_counter()
    if first is None or usage is None:
        raise RuntimeError(f"/v1 returned no text or no usage for prompt {prompt_index}")
    return Sample(prompt_index, first - t0, end - t0, int(usage.completion_tokens), "".join(text))


def openai_client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)


def concurrency_level(url: str, model: str, clients: int, total: int, max_tokens: int) -> dict:
    """``clients`` closed-loop streaming clients (threads) share ``total`` requests; wall time runs
    from the common start to the last request's end."""
    work = list(enumerate(schedule(total)))
    lock = threading.Lock()
    samples: list[Sample] = []
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client_loop():
        oai = openai_client(url)
        barrier.wait()
        while True:
            with lock:
                if not work:
                    break
                _, idx = work.pop(0)
            try:
                s = v1_request(oai, model, idx, PROMPTS[idx], max_tokens)
                with lock:
                    samples.append(s)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the sweep goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
        oai.close()

    threads = [threading.Thread(target=client_loop, name=f"bench-client-{i}", daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(s.tokens for s in samples)
    ttft = [s.ttft_s * 1000 for s in samples]
    tpot = [s.tpot_s * 1000 for s in samples if s.tpot_s is not None]
    return {
        "clients": clients,
        "requests": total,
        "completed": len(samples),
        "errors": errors,
        "wall_s": wall,
        "output_tokens": tokens,
        "aggregate_tok_s": tokens / wall if wall > 0 else None,
        "requests_per_s": len(samples) / wall if wall > 0 else None,
        "ttft_ms_p50": percentile(ttft, 50),
        "ttft_ms_p99": percentile(ttft, 99),
        "tpot_ms_p50": percentile(tpot, 50),
        "tpot_ms_p99": percentile(tpot, 99),
        "per_request_decode_tok_s_p50": percentile([s.tok_s for s in samples], 50),
        "samples": [s.as_dict() for s in samples],
    }


# --- phases ------------------------------------------------------------------------------------------


def run_raw(args, order: list[int], rss: RssSampler) -> tuple[list[Sample], dict]:
    from backends.sources import default_cache_dir, embedded_model_path

    if args.backend == "llamacpp":
        path = Path(args.model) if args.model else embedded_model_path()
        log(f"RAW: llama_cpp.Llama({path.name}, n_ctx={args.n_ctx}, n_threads={args.threads}, n_threads_batch={args.threads})")
        engine = RawLlamaCpp(path, args.n_ctx, args.threads)
        info = {"engine": "llama_cpp.Llama.create_chat_completion(stream=True)", "model_file": str(path)}
    else:
        from backends.hf_convert import hf_checkpoint_from_gguf

        if args.model:
            checkpoint = Path(args.model)
        else:
            log("RAW: deriving (or reusing) the HF checkpoint of the embedded GGUF")
            checkpoint = hf_checkpoint_from_gguf(embedded_model_path(), default_cache_dir())
        log(f"RAW: transformers {checkpoint.name} at {args.dtype}")
        engine = RawTransformers(checkpoint, {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}[args.dtype])
        info = {"engine": "transformers generate + TextIteratorStreamer", "model_file": str(checkpoint)}
    rss.mark("raw_loaded")
    try:
        engine.run(-1, WARMUP_PROMPT, args.max_tokens)
        samples = []
        for i, idx in enumerate(order):
            s = engine.run(idx, PROMPTS[idx], args.max_tokens)
            log(f"RAW {i + 1}/{len(order)}: {s.tokens} tok, TTFT {s.ttft_s * 1000:.1f} ms, {s.tok_s or 0:.1f} tok/s")
            samples.append(s)
        rss.mark("raw_done")
    finally:
        engine.close()
        del engine
        gc.collect()
    return samples, info


def app_spec(args):
    from backends.base import ModelSpec

    source = args.model or "embedded"
    if args.backend == "llamacpp":
        return ModelSpec(source=source, backend="llamacpp", n_ctx=args.n_ctx, n_threads=args.threads,
                         parallel=args.parallel)
    return ModelSpec(source=source, backend="transformers", quantization=args.dtype, n_ctx=args.n_ctx,
                     parallel=args.parallel)


def run_app(args, order: list[int], rss: RssSampler) -> dict:
    from gradio_client import Client

    out: dict = {}
    if args.app_mode == "inprocess":
        log("APP: starting create_app() under uvicorn in a thread of this process")
        server = AppServer(args.n_ctx, args.threads if args.backend == "llamacpp" else None)
    else:
        server = AppSubprocess(args)
        log(f"APP: starting {' '.join(server.cmd[1:])}")
    with server as srv:
        out["model"] = info = srv.load(app_spec(args))
        log(f"APP: loaded {info['name']} ({info['backend']}, {info['quantization']}) at {srv.url}")
        app_rss = rss
        if args.app_mode == "subprocess":  # the app's memory is the server process's
            app_rss = RssSampler(srv.pid, snapshots=rss.snapshots).start()
        out["app_rss"] = app_rss
        app_rss.mark("app_loaded")

        def measure(label: str, request, warm_mark: str | None = None) -> list[Sample]:
            """One warm-up, then every prompt in order, one after the other."""
            request(-1, WARMUP_PROMPT)
            if warm_mark:
                app_rss.mark(warm_mark)
            samples = []
            for i, idx in enumerate(order):
                s = request(idx, PROMPTS[idx])
                log(f"APP {label} {i + 1}/{len(order)}: {s.tokens} tok, TTFT {s.ttft_s * 1000:.1f} ms, {s.tok_s or 0:.1f} tok/s")
                samples.append(s)
            return samples

        client = Client(srv.url, verbose=False)
        try:
            out["app_gradio"] = measure("/chat", lambda i, p: gradio_request(client, i, p, args.max_tokens))
        finally:
            client.close()

        import httpx

        with httpx.Client(base_url=srv.url, timeout=600) as http:
            out["app_rest"] = measure("/chat REST", lambda i, p: rest_request(http, i, p, args.max_tokens))

        oai = openai_client(srv.url)
        try:
            out["app_v1"] = measure("/v1", lambda i, p: v1_request(oai, "default", i, p, args.max_tokens), "app_warm")
        finally:
            oai.close()

        levels = []
        for n in args.concurrency_levels:
            total = max(args.requests, n)
            log(f"SWEEP: {n} concurrent /v1 clients, {total} requests")
            level = concurrency_level(srv.url, "default", n, total, args.max_tokens)
            log(f"SWEEP {n}: {level['aggregate_tok_s'] or 0:.1f} tok/s aggregate, TTFT p50 "
                f"{level['ttft_ms_p50'] or 0:.0f} ms, {len(level['errors'])} errors")
            levels.append(level)
        out["concurrency"] = levels
        app_rss.mark("app_done")
        if app_rss is not rss:
            app_rss.stop()
    return out


# --- report ------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def build_results(args, raw_samples, raw_info, app, rss: RssSampler, started: float) -> dict:
    paths = {"raw": summarize(raw_samples), **{k: summarize(app[k]) for k in APP_PATHS}}
    paths["raw"].update(raw_info)
    raw_text = {s.prompt_index: s.text for s in raw_samples}
    for key in APP_PATHS:  # greedy on the same prompt: the same reply is expected
        paths[key]["same_text_as_raw"] = sum(1 for s in app[key] if raw_text.get(s.prompt_index) == s.text)
    raw = paths["raw"]
    ratios = {f"{k}_tok_s_vs_raw": ratio(paths[k]["decode_tok_s"], raw["decode_tok_s"]) for k in APP_PATHS}
    ttft_added = {f"{k}_ms": paths[k]["ttft_ms_p50"] - raw["ttft_ms_p50"] for k in APP_PATHS}
    levels = app["concurrency"]
    base = next((lv for lv in levels if lv["clients"] == 1), levels[0] if levels else None)
    for lv in levels:
        lv["scaling_vs_1"] = ratio(lv["aggregate_tok_s"], base["aggregate_tok_s"] if base else None)
    scaling = {str(lv["clients"]): lv["scaling_vs_1"] for lv in levels}
    goals = {
        "tok_s_ratio_min": GOAL_TOK_S_RATIO,
        "ttft_added_ms_max": GOAL_TTFT_ADDED_MS,
        "scaling_min": {str(k): v for k, v in GOAL_SCALING[args.backend].items()},
    }
    verdict = {}
    for k in APP_PATHS:
        verdict[f"{k}_tok_s"] = _meets(ratios[f"{k}_tok_s_vs_raw"], GOAL_TOK_S_RATIO, higher=True)
        verdict[f"{k}_ttft"] = _meets(ttft_added[f"{k}_ms"], GOAL_TTFT_ADDED_MS, higher=False)
    for n, goal in goals["scaling_min"].items():
        if n in scaling:
            verdict[f"scaling_{n}"] = _meets(scaling[n], goal, higher=True)
    snaps = rss.snapshots
    app_rss = app["app_rss"]
    mem = {
        # app_* snapshots are the process that runs the app: this one, or the server subprocess
        "app_process": "this process" if app_rss is rss else f"server subprocess (pid {app_rss._proc.pid})",
        "rss_mib": {k: round(v / 2**20, 1) for k, v in snaps.items()},
        "peak_mib": round(rss.peak / 2**20, 1),
        "app_peak_mib": round(app_rss.peak / 2**20, 1),
        "growth_run_mib": round((snaps["end"] - snaps["start"]) / 2**20, 1),
        # After the app is loaded and warm: what serving requests added (a leak shows here).
        "growth_serving_mib": round((snaps["app_done"] - snaps["app_warm"]) / 2**20, 1),
    }
    import llama_cpp

    return {
        "meta": {
            "backend": args.backend, "app_mode": args.app_mode, "model": app["model"], "n_ctx": args.n_ctx,
            "n_threads": args.threads if args.backend == "llamacpp" else _torch_threads(),
            "dtype": args.dtype if args.backend == "transformers" else None,
            "requests_per_path": args.requests, "max_tokens": args.max_tokens, "concurrency": args.concurrency_levels,
            "short": args.short, "prompts": list(PROMPTS), "system_prompt": SYSTEM_PROMPT, "decoding": "greedy",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "duration_s": time.time() - started, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "llama_cpp_python": llama_cpp.__version__,
            "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "definitions": {"ttft": "client-side: request sent -> first non-empty text",
                            "decode_tok_s": "sum(tokens - 1) / sum(latency - ttft) over the path's requests",
                            "tpot": "(latency - ttft) / (tokens - 1)",
                            "aggregate_tok_s": "all output tokens at that level / wall time of the level"},
        },
        "paths": paths,
        "concurrency": levels,
        "ratios": ratios,
        "scaling": scaling,
        "ttft_added_ms": ttft_added,
        "goals": goals,
        "meets_goals": verdict,
        "rss": mem,
    }


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def _meets(value: float | None, goal: float, higher: bool) -> bool | None:
    if value is None:
        return None
    return value >= goal if higher else value <= goal


def _f(v, fmt: str, none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def _ok(v: bool | None) -> str:
    return {True: "ok", False: "MISS", None: "?"}[v]


def render(res: dict) -> str:
    m, p = res["meta"], res["paths"]
    lines = [
        "",
        f"QuantLab serving benchmark · {m['backend']} · {m['model']['name']} ({m['model']['quantization']}) · greedy",
        f"{len(m['prompts'])} prompts · {m['requests_per_path']} requests/path (+1 warm-up) · max {m['max_tokens']} tokens"
        f" · app {m['app_mode']} · n_threads={m['n_threads']} · load avg {_f(m['load_avg_1m'], '.2f')} · {m['duration_s']:.0f} s",
        "",
        f"{'path':<28}{'reqs':>5}{'tok/req':>9}{'TTFT p50':>10}{'TTFT mean':>11}{'TPOT p50':>10}"
        f"{'decode tok/s':>14}{'server TTFT':>13}{'same text':>11}",
    ]
    for key in PATHS:
        s = p[key]
        same = "-" if key == "raw" else f"{s['same_text_as_raw']}/{s['requests']}"
        lines.append(f"{PATH_LABELS[key]:<28}{s['requests']:>5}{s['tokens_mean']:>9.1f}{_f(s['ttft_ms_p50'], '.1f'):>8} ms"
                     f"{_f(s['ttft_ms_mean'], '.1f'):>8} ms{_f(s['tpot_ms_p50'], '.2f'):>7} ms"
                     f"{_f(s['decode_tok_s'], '.1f'):>14}{_f(s['server_ttft_ms_p50'], '.1f'):>10} ms{same:>11}")
    r, t, v, g = res["ratios"], res["ttft_added_ms"], res["meets_goals"], res["goals"]
    ref = REFERENCE if m["backend"] == "llamacpp" else dict.fromkeys(APP_PATHS, "")  # llama.cpp figures only
    short = {"app_gradio": "/chat gradio_client", "app_rest": "/chat REST", "app_v1": "/v1"}
    lines += [
        "(client-side; decode tok/s = median over requests of (tokens - 1) / (latency - TTFT); "
        "server TTFT = the app's own measurement)",
        "",
        f"{'ratio (same run)':<36}{'measured':>10}{'goal':>10}{'':>6}  to beat (DESIGN.md section 5)",
    ]
    for k in APP_PATHS:
        lines.append(f"{'app ' + short[k] + ' tok/s / raw':<36}{_f(r[k + '_tok_s_vs_raw'], '.3f'):>10}"
                     f"{'>= ' + str(GOAL_TOK_S_RATIO):>10}{_ok(v[k + '_tok_s']):>6}  {ref.get(k, '')}")
    for k in APP_PATHS:
        lines.append(f"{'app ' + short[k] + ' TTFT added (p50, ms)':<36}{_f(t[k + '_ms'], '+.1f'):>10}"
                     f"{'<= ' + str(int(GOAL_TTFT_ADDED_MS)):>10}{_ok(v[k + '_ttft']):>6}")
    for n, sc in res["scaling"].items():
        if n == "1":
            continue
        goal = g["scaling_min"].get(n)
        lines.append(f"{'/v1 scaling, ' + n + ' clients vs 1':<36}{_f(sc, '.2f') + 'x':>10}"
                     f"{('>= ' + str(goal) + 'x') if goal else '-':>10}{_ok(v.get('scaling_' + n)) if goal else '':>6}")
    lines += [
        "",
        "/v1 concurrency sweep (streaming clients; TPOT = (latency - TTFT)/(tokens - 1))",
        f"{'clients':>7}{'reqs':>6}{'errors':>7}{'agg tok/s':>11}{'scaling':>9}{'TTFT p50':>11}{'TTFT p99':>11}"
        f"{'TPOT p50':>11}{'TPOT p99':>11}",
    ]
    for lv in res["concurrency"]:
        lines.append(f"{lv['clients']:>7}{lv['requests']:>6}{len(lv['errors']):>7}{_f(lv['aggregate_tok_s'], '.1f'):>11}"
                     f"{_f(lv['scaling_vs_1'], '.2f') + 'x':>9}{_f(lv['ttft_ms_p50'], '.0f'):>8} ms"
                     f"{_f(lv['ttft_ms_p99'], '.0f'):>8} ms{_f(lv['tpot_ms_p50'], '.1f'):>8} ms"
                     f"{_f(lv['tpot_ms_p99'], '.1f'):>8} ms")
    if m["backend"] == "llamacpp" and m["n_threads"] >= (m["cpu_count"] or 0):
        who = "SSE, the clients in this process" if m["app_mode"] == "inprocess" else "SSE; the client process"
        lines += ["", f"note: n_threads={m['n_threads']} = all {m['cpu_count']} CPUs: the app's own work (event loop, "
                      f"{who}) competes with llama.cpp's threads; compare with --threads "
                      f"{max(1, (m['cpu_count'] or 2) - 1)}" + (" and --app-mode subprocess." if m["app_mode"] == "inprocess" else ".")]
    mem = res["rss"]
    mib = mem["rss_mib"]
    if mem["app_process"] == "this process":
        lines += ["", "RSS (MiB): " + " -> ".join(f"{k} {v:.0f}" for k, v in mib.items())
                  + f"; peak {mem['peak_mib']:.0f}"]
    else:
        lines += ["", "RSS (MiB), this process: " + " -> ".join(f"{k} {v:.0f}" for k, v in mib.items()
                                                             if not k.startswith("app_"))
                  + f"; peak {mem['peak_mib']:.0f}",
                  f"RSS (MiB), {mem['app_process']}: " + " -> ".join(f"{k} {v:.0f}" for k, v in mib.items()
                                                                   if k.startswith("app_"))
                  + f"; peak {mem['app_peak_mib']:.0f}"]
    lines.append(f"RSS growth: over the run (this process) {mem['growth_run_mib']:+.1f} MiB; while serving "
                 f"(warm app -> end of sweep) {mem['growth_serving_mib']:+.1f} MiB")
    if "plot" in res:
        lines.append(f"results: {res['out']} · plot: {res['plot']}")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = res["concurrency"]
    xs = [lv["clients"] for lv in levels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(xs, [lv["aggregate_tok_s"] or 0 for lv in levels], "o-", label="app /v1 aggregate")
    raw = res["paths"]["raw"]["output_tok_s"]
    if raw:
        ax1.axhline(raw, color="grey", ls=":", label="raw engine, 1 stream (tokens / latency)")
    base = levels[0]["aggregate_tok_s"] if levels else None
    if base and len(xs) > 1:
        ax1.plot(xs, [base * x / xs[0] for x in xs], "--", color="lightgrey", label="linear scaling")
    for n, goal in res["goals"]["scaling_min"].items():
        if base and int(n) in xs:
            ax1.plot([int(n)], [base * goal], "r*", ms=10, label=f"goal {goal}x at {n}")
    ax1.set(xlabel="concurrent streaming clients", ylabel="output tokens/s", title="Throughput vs concurrency")
    ax1.set_xticks(xs)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(xs, [lv["ttft_ms_p50"] or 0 for lv in levels], "o-", label="TTFT p50")
    ax2.plot(xs, [lv["ttft_ms_p99"] or 0 for lv in levels], "s--", alpha=0.6, label="TTFT p99")
    ax2.set(xlabel="concurrent streaming clients", ylabel="ms", title="Time to first token vs concurrency")
    ax2.set_xticks(xs)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    m = res["meta"]
    fig.suptitle(f"QuantLab /v1 · {m['backend']} · {m['model']['name']} · max {m['max_tokens']} tokens", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("llamacpp", "transformers"), default="llamacpp")
    ap.add_argument("--model", default=None,
                    help="llamacpp: a GGUF file; transformers: a checkpoint folder (default: the embedded SmolLM2 model)")
    ap.add_argument("--requests", type=int, default=None, help="measured requests per path (default 5; --short: 2)")
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per reply (default 128; --short: 32)")
    ap.add_argument("--concurrency", default=None, help="comma-separated client counts (default 1,4,8; --full adds 16; --short: 1,2)")
    ap.add_argument("--short", action="store_true", help="CI smoke mode: 2 requests, 32 tokens, concurrency 1,2")
    ap.add_argument("--full", action="store_true", help="add 16 clients to the default sweep")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads, raw and app alike (default: physical cores, as the app)")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--parallel", type=int, default=4, help="batch slots in the app, either backend (the app's default: 4)")
    ap.add_argument("--app-mode", choices=("inprocess", "subprocess"), default="inprocess",
                    help="inprocess: create_app() under uvicorn in a thread here (default); subprocess: "
                         "`python app.py` in its own process, so the clients share no GIL with the server")
    ap.add_argument("--dtype", choices=("bf16", "fp32", "fp16"), default="bf16", help="transformers: weights dtype (raw and app)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving.json"),
                    help="JSON results; the PNG plot goes beside it with the same stem")
    args = ap.parse_args(argv)
    args.requests = args.requests if args.requests is not None else (2 if args.short else 5)
    args.max_tokens = args.max_tokens if args.max_tokens is not None else (32 if args.short else 128)
    if args.concurrency is None:
        args.concurrency = "1,2" if args.short else ("1,4,8,16" if args.full else "1,4,8")
    try:
        levels = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if not levels or levels[0] < 1:
        ap.error("--concurrency needs client counts >= 1")
    if args.requests < 1 or args.max_tokens < 2:
        ap.error("--requests must be >= 1 and --max-tokens >= 2 (TPOT needs two tokens)")
    args.concurrency_levels = levels
    if args.threads is None:
        from backends.llamacpp import physical_cores

        args.threads = physical_cores()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    started = time.time()
    rss = RssSampler().start()
    rss.mark("start")
    order = schedule(args.requests)
    try:
        raw_samples, raw_info = run_raw(args, order, rss)  # the raw engine is closed before the app starts
        rss.mark("raw_closed")
        app = run_app(args, order, rss)
        rss.mark("end")
    finally:
        rss.stop()
    res = build_results(args, raw_samples, raw_info, app, rss, started)
    plot(res, png)
    res["plot"], res["out"] = str(png), str(out)
    out.write_text(json.dumps(res, indent=2, default=_json_default))
    print(render(res), flush=True)
    return 0


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
