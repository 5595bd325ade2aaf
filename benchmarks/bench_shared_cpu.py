"""Shared-CPU benchmark: the app on a CPU that other processes want, in ONE run, alternating.

    python -m benchmarks.bench_shared_cpu                          # ~5-10 min: llama.cpp, transformers, Compare
    python -m benchmarks.bench_shared_cpu --short                  # CI smoke: 1 round, 16 tokens, no Compare
    python -m benchmarks.bench_shared_cpu --rounds 5 --max-tokens 128   # longer
    python -m benchmarks.bench_shared_cpu --only llamacpp          # or transformers, compare

Three phases, in this order (each printed as soon as it is done):

1. **llama.cpp**, with 0, 1 and 2 busy processes (``python -c 'while True: pass'``) beside the servers: the app
   with its defaults (``python app.py``, embedded model) against llama.cpp's own ``llama-server`` with its
   defaults (``--llama-server``, default ``~/.cache/quantlab-tools/bin/llama-server``, built by
   ``benchmarks/build_llama_tools.sh``; started with libgomp's defaults, as its users run it), the same GGUF,
   one ``/v1`` stream at a time, the two taking turns on each prompt.
2. **Compare of 3 llama.cpp variants** with one busy process: the app's defaults, the same variants run one
   after another, and the app as it was before the thread policy (``--threads 2`` with libgomp's default
   spin, ``GOMP_SPINCOUNT=300000``: fixed threads that spin at every barrier).
3. **transformers**, with 0, 1 and 2 busy processes: the app with ``--backend transformers`` against
   ``generate()`` in a process of its own (torch's defaults), the same checkpoint and dtype, the same alternation.

A request is capped at ``--cap-s`` seconds (a collapsed engine would otherwise take minutes); decode tok/s is
(tokens - 1) / (last token - first token) either way. Medians over ``--rounds``; the ratios are the goals of
benchmarks/README.md ("Shared CPU"). Never a test: no assertion on times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")

from benchmarks.common.workload import PROMPTS, WARMUP_PROMPT, log, messages_for

if __name__ == "__main__" and sys.argv[1:2] == ["--raw-generate-worker"]:
    harness = None  # the worker imports nothing of the app's: torch meets libgomp's defaults, as a user's script
else:
    from benchmarks.common import harness

BUSY_LEVELS = (0, 1, 2)
VARIANTS = ("llamacpp:Q8_0", "llamacpp:Q4_0", "llamacpp:Q4_K_M")
BEFORE_ENV = {"GOMP_SPINCOUNT": "300000"}  # libgomp's own default spin: the app before its policy


_ServerProcess = harness._ServerProcess if harness is not None else object


class Busy:
    """``n`` processes spinning on a core each, for as long as the block runs."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(0.5)  # let the scheduler see them
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


class App(_ServerProcess):
    """``python app.py`` with its defaults plus ``extra`` flags and ``env`` changes."""

    name = "the app"

    def __init__(self, extra: list[str] = (), env: dict | None = None):
        from backends.omp_env import environ_without_policy

        super().__init__()
        self.cmd = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port),
                    "--request-log", "", *extra]
        self.env = {**environ_without_policy(), **(env or {})}  # the app sets its own policy, unless env does

    def wait_loaded(self) -> dict:
        def ready(r):
            body = r.json()
            if r.status_code == 200:
                return body["model"]
            if body.get("last_error"):
                raise RuntimeError(f"the app could not load the model: {body['last_error']}")
            return None

        return self._wait_healthy(ready, 900)


class DefaultLlamaServer(_ServerProcess):
    """llama-server with its own defaults (threads, slots, context, flash attention), the app's GGUF."""

    name = "llama-server"

    def __init__(self, binary: str, model_path: Path):
        from backends.llamacpp.open import cpu_has_amx
        from backends.omp_env import environ_without_policy

        super().__init__()
        self.cmd = [binary, "-m", str(model_path), "--host", "127.0.0.1", "--port", str(self.port), "-a", "default",
                    "--no-webui"] + (["--no-repack"] if cpu_has_amx() else [])
        self.env = environ_without_policy()

    def wait_ready(self) -> None:
        self._wait_healthy(lambda r: True if r.status_code == 200 else None, 300)


class RawGenerate:
    """``generate()`` in a process of its own (this module with --raw-generate-worker), torch's defaults."""

    def __init__(self, checkpoint: Path, dtype: str):
        from backends.omp_env import environ_without_policy

        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_shared_cpu", "--raw-generate-worker",
                                      str(checkpoint), dtype],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=environ_without_policy(), cwd=ROOT)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the raw generate() worker did not start: {line!r}")

    def request(self, prompt_index: int, max_tokens: int, cap_s: float) -> dict:
        self.proc.stdin.write(json.dumps({"prompt": prompt_index, "max_tokens": max_tokens, "cap_s": cap_s}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def raw_generate_worker(checkpoint: str, dtype: str) -> None:
    """The child of RawGenerate: one generate() per request line, timed per token, capped in time."""
    import threading

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtypes[dtype], device_map="cpu").eval()
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        prompt = WARMUP_PROMPT if req["prompt"] < 0 else PROMPTS[req["prompt"]]
        ids = tok.apply_chat_template(messages_for(prompt), add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        times: list[float] = []
        deadline = time.perf_counter() + req["cap_s"]

        class Times(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:
                    self.first = False
                    return
                times.extend([time.perf_counter()] * value.numel())

            def end(self):
                pass

        class Cap(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), time.perf_counter() > deadline, dtype=torch.bool)

        t0 = time.perf_counter()

        def run():
            with torch.inference_mode():
                model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                               max_new_tokens=req["max_tokens"], do_sample=False, temperature=None, top_p=None,
                               top_k=None, streamer=Times(), stopping_criteria=[Cap()],
                               pad_token_id=tok.eos_token_id)

        t = threading.Thread(target=run)  # a thread that ends with the request, like the app's generate()
        t.start()
        t.join()
        print(json.dumps(_timing(t0, times)), flush=True)


def _timing(t0: float, times: list[float]) -> dict:
    n = len(times)
    tok_s = (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else None
    return {"tokens": n, "ttft_s": times[0] - t0 if times else None, "tok_s": tok_s}


def v1_request(url: str, model: str, prompt_index: int, max_tokens: int, cap_s: float) -> dict:
    """One streamed /v1 chat completion, stopped after ``cap_s`` seconds; each content chunk is a token
    (both servers stream one token per chunk)."""
    import httpx

    prompt = WARMUP_PROMPT if prompt_index < 0 else PROMPTS[prompt_index]
    body = {"model": model, "messages": messages_for(prompt), "stream": True, "max_tokens": max_tokens,
            "temperature": 0.0, "seed": 0}
    times: list[float] = []
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=cap_s + 600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                times.append(time.perf_counter())
            if time.perf_counter() - t0 > cap_s:
                break
    return _timing(t0, times)


def alternate(paths: dict, args, label: str) -> dict:
    """``paths``: {name: request(prompt_index) -> timing}. Per busy level: a warm-up each, then ``rounds``
    prompts, the paths taking turns (the first path alternating)."""
    out: dict = {}
    for busy in args.busy_levels:
        with Busy(busy):
            for request in paths.values():
                request(-1)
            names = list(paths)
            for r in range(args.rounds):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    t = paths[name](r % len(PROMPTS))
                    out.setdefault(busy, {}).setdefault(name, []).append(t["tok_s"] or 0.0)
                    log(f"{label} busy={busy} round {r + 1}: {name} {t['tok_s'] or 0:.1f} tok/s ({t['tokens']} tokens)")
    return {busy: {name: statistics.median(v) for name, v in d.items()} for busy, d in out.items()}


def phase_llamacpp(args) -> dict:
    from backends.files.sources import embedded_model_path

    gguf = Path(args.gguf) if args.gguf else embedded_model_path()
    with contextlib.ExitStack() as stack:
        app = stack.enter_context(App(["--model", str(gguf)] if args.gguf else [], env=args.app_environ))
        ls = stack.enter_context(DefaultLlamaServer(args.llama_server, gguf))
        log(f"LLAMACPP: {' '.join(app.cmd[1:])} | {' '.join(ls.cmd)}")
        info = app.wait_loaded()
        ls.wait_ready()
        paths = {"app": lambda i: v1_request(app.url, "default", i, args.max_tokens, args.cap_s),
                 "llama-server": lambda i: v1_request(ls.url, "default", i, args.max_tokens, args.cap_s)}
        res = alternate(paths, args, "LLAMACPP")
        return {"medians": res, "app_threads": {k: info.get(k) for k in ("n_threads", "threads_mode", "threads_why",
                                                                          "omp_wait_policy")}}


def phase_transformers(args) -> dict:
    from backends.files.hf_convert import hf_checkpoint_from_gguf
    from backends.files.sources import default_cache_dir, embedded_model_path

    checkpoint = hf_checkpoint_from_gguf(embedded_model_path(), default_cache_dir())
    with contextlib.ExitStack() as stack:
        app = stack.enter_context(App(["--backend", "transformers", "--quantization", args.dtype], args.app_environ))
        log(f"TRANSFORMERS: {' '.join(app.cmd[1:])} | generate() on {checkpoint.name} at {args.dtype}")
        raw = RawGenerate(checkpoint, args.dtype)
        stack.callback(raw.close)
        app.wait_loaded()
        paths = {"app": lambda i: v1_request(app.url, "default", i, args.max_tokens, args.cap_s),
                 "generate()": lambda i: raw.request(i, args.max_tokens, args.cap_s)}
        return {"medians": alternate(paths, args, "TRANSFORMERS")}


def compare_wall(url: str, variants, max_tokens: int) -> float:
    """Wall seconds of one /compare over Gradio's REST API (POST, then its SSE stream to the end)."""
    import httpx

    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=3600) as http:
        data = [PROMPTS[0], list(variants), "embedded", max_tokens, 0.0, 0]
        event = http.post("/gradio_api/call/compare", json={"data": data}).raise_for_status().json()["event_id"]
        with http.stream("GET", f"/gradio_api/call/compare/{event}") as r:
            kind = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "error":
                    raise RuntimeError(f"/compare failed: {line[5:]:.300}")
    return time.perf_counter() - t0


def phase_compare(args) -> dict:
    out = {}
    runs = {"app, together": ([], None, False), "app, one after another": ([], None, True),
            "before (--threads 2, libgomp's spin)": (["--threads", "2"], BEFORE_ENV, False)}
    for name, (extra, env, serial) in runs.items():
        with App(["--no-model", *extra], env) as app:
            app._wait_healthy(lambda r: True if r.status_code in (200, 503) else None, 300)
            compare_wall(app.url, VARIANTS, 4)  # makes and loads the variants (cached after the first run)
            with Busy(1):
                if serial:
                    wall = sum(compare_wall(app.url, [v], args.compare_tokens) for v in VARIANTS)
                else:
                    wall = compare_wall(app.url, VARIANTS, args.compare_tokens)
            out[name] = wall
            log(f"COMPARE {name}: {wall:.1f} s for {len(VARIANTS)} x {args.compare_tokens} tokens, one busy process")
    return out


def render(res: dict, args) -> str:
    lines = [f"Shared CPU ({os.cpu_count()} CPUs), {args.rounds} rounds x {args.max_tokens} tokens, cap {args.cap_s:g} s, "
             "medians of decode tok/s"]

    def table(phase: str, a: str, b: str) -> None:
        m = res[phase]["medians"]
        lines.append(f"\n{phase}: {a} vs {b}")
        lines.append(f"| busy processes | {a} | {b} | {a} / {b} | {a} / its quiet |")
        lines.append("|---|---|---|---|---|")
        quiet = m.get(0, {}).get(a)
        for busy, d in sorted(m.items()):
            x, y = d.get(a) or 0.0, d.get(b) or 0.0
            lines.append(f"| {busy} | {x:.1f} | {y:.1f} | {x / y if y else float('nan'):.2f} | "
                         f"{x / quiet if quiet else float('nan'):.2f} |")

    if "llamacpp" in res:
        table("llamacpp", "app", "llama-server")
        lines.append(f"app threads: {json.dumps(res['llamacpp']['app_threads'])}")
    if "transformers" in res:
        table("transformers", "app", "generate()")
    if "compare" in res:
        c = res["compare"]
        lines.append(f"\nCompare of {len(VARIANTS)} variants ({', '.join(VARIANTS)}), {args.compare_tokens} tokens, "
                     "one busy process: wall seconds")
        for name, wall in c.items():
            lines.append(f"  {name}: {wall:.1f} s")
        before = c.get("before (--threads 2, libgomp's spin)")
        if before and c.get("app, together"):
            lines.append(f"  before / app: {before / c['app, together']:.1f}x")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="requests per path and busy level (default 3; --short 1)")
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default 64; --short 16)")
    ap.add_argument("--cap-s", type=float, default=10.0, help="longest a request may run (seconds)")
    ap.add_argument("--compare-tokens", type=int, default=16, help="tokens per variant in the Compare phase")
    ap.add_argument("--busy", default="0,1,2", help="busy process counts (comma-separated)")
    ap.add_argument("--only", choices=("llamacpp", "transformers", "compare"), action="append",
                    help="run only these phases (repeatable; default all, --short: llamacpp)")
    ap.add_argument("--short", action="store_true", help="CI smoke: 1 round, 16 tokens, the llama.cpp phase")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="transformers: weights dtype (app and raw)")
    ap.add_argument("--gguf", default=None, help="llama.cpp phase: this GGUF for both servers (default: the embedded "
                    "model), e.g. an F16 one, whose slower tokens show what the app's per-token cost weighs")
    ap.add_argument("--llama-server", default=str(Path("~/.cache/quantlab-tools/bin/llama-server").expanduser()))
    ap.add_argument("--app-env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for the app in the llama.cpp and transformers phases, e.g. "
                         "GOMP_SPINCOUNT=300000 to try another wait policy (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shared_cpu.json"))
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (1 if args.short else 3)
    args.max_tokens = args.max_tokens or (16 if args.short else 64)
    args.busy_levels = [int(x) for x in args.busy.split(",") if x.strip()]
    try:
        args.app_environ = dict(item.split("=", 1) for item in args.app_env)
    except ValueError:
        ap.error("--app-env takes NAME=VALUE")
    args.phases = args.only or (["llamacpp"] if args.short else ["llamacpp", "compare", "transformers"])
    if "llamacpp" in args.phases and not os.access(args.llama_server, os.X_OK):
        ap.error(f"--llama-server {args.llama_server} is not an executable (benchmarks/build_llama_tools.sh builds it)")
    return args


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--raw-generate-worker":
        raw_generate_worker(sys.argv[2], sys.argv[3])
        return 0
    args = parse_args(argv)
    res: dict = {"args": {k: v for k, v in vars(args).items()}, "load_avg_start": os.getloadavg()}
    phases = {"llamacpp": phase_llamacpp, "transformers": phase_transformers, "compare": phase_compare}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.phases:
        res[name] = phases[name](args)
        res["load_avg_end"] = os.getloadavg()
        out.write_text(json.dumps(res, indent=2, default=str))  # each phase kept as soon as it is done
        log("so far:\n" + render(res, args))
    print(render(res, args), flush=True)
    print(f"load average at start / end: {res['load_avg_start'][0]:.1f} / {res['load_avg_end'][0]:.1f}; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
