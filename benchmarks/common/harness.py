"""What the benchmark measures: the app (in this process or as ``python app.py``), llama.cpp's own
llama-server, and the memory of the process that serves.

The in-process app is ``app.LiveServer`` (the tests run the app the same way); memory is sampled with the
monitor the app itself uses (``monitoring.memory.MemoryMonitor``).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app import LiveServer, free_port
from benchmarks.common.workload import log
from monitoring.memory import MemoryMonitor

ROOT = Path(__file__).resolve().parents[2]


class RssTracker(MemoryMonitor):
    """The app's memory monitor, sampling every 0.2 s, plus the peak RSS and named snapshots.

    ``pid``: another process to watch (the server subprocess) instead of this one."""

    def __init__(self, pid: int | None = None, interval: float = 0.2, snapshots: dict | None = None):
        super().__init__(interval=interval, keep=8, pid=pid)  # only the peak is kept, not a history
        self.snapshots: dict[str, int] = {} if snapshots is None else snapshots
        self.peak = self.rss()

    def sample(self) -> dict:
        snap = super().sample()
        self.peak = max(self.peak, snap["process"]["rss_bytes"])
        return snap

    def start(self) -> RssTracker:
        super().start()
        return self

    def mark(self, name: str) -> int:
        gc.collect()
        value = self.rss()
        self.peak = max(self.peak, value)
        self.snapshots[name] = value
        log(f"RSS {name}: {value / 2**20:.0f} MiB")
        return value


def app_spec(args):
    from backends.base import ModelSpec

    source = args.model or "embedded"
    if args.backend == "llamacpp":
        return ModelSpec(source=source, backend="llamacpp", n_ctx=args.n_ctx, n_threads=args.threads,
                         parallel=args.parallel)
    return ModelSpec(source=source, backend="transformers", quantization=args.dtype, n_ctx=args.n_ctx,
                     parallel=args.parallel)


class InProcessApp(LiveServer):
    """The real app (create_app: FastAPI + Gradio + /v1) under uvicorn in a thread of this process."""

    def __init__(self, n_ctx: int, n_threads: int | None, prompt_cache_mib: int = 0):
        from serving.settings import Settings

        super().__init__(Settings(port=free_port(), no_model=True, host="127.0.0.1", n_ctx=n_ctx, n_threads=n_threads,
                                  request_log="", auth=None, api_key=None, rate_limit_rpm=0, max_streams_per_client=0,
                                  prompt_cache_mib=prompt_cache_mib))

    def load(self, spec) -> dict:
        info = self.manager.load(spec.with_(prompt_cache_mib=self.settings.prompt_cache_mib))
        return {"name": info.name, "backend": info.backend, "quantization": info.quantization,
                "device": info.device, "details": info.details}

    @property
    def pid(self) -> int:
        return os.getpid()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        try:
            self.manager.unload()
        except Exception:  # noqa: BLE001 - best effort at the end of a benchmark
            pass


class _ServerProcess:
    """A server command in its own process, its output in a temporary file; stopped with SIGTERM."""

    name = "server"
    cmd: list[str]
    env: dict | None = None  # None: this process's environment

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def __enter__(self):
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _tail(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-3000:]

    def _wait_healthy(self, ready, timeout: float) -> dict:
        """Poll GET /health until ``ready(response)`` returns a value (not None)."""
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self._tail()}")
            try:
                value = ready(httpx.get(f"{self.url}/health", timeout=5))
                if value is not None:
                    return value
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f} s:\n{self._tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # app.py drains and exits 0 on SIGTERM; so does llama-server
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class AppSubprocess(_ServerProcess):
    """``python app.py`` in its own process (--app-mode subprocess): the clients of this benchmark then
    share no GIL with the server, as in a deployment. The model is the one the command line names."""

    name = "the app"

    def __init__(self, args):
        super().__init__()
        self.cmd = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port),
                    "--request-log", "", "--n-ctx", str(args.n_ctx), "--backend", args.backend,
                    "--model", args.model or "embedded"]
        self.cmd += ["--parallel", str(args.parallel), "--prompt-cache-mib", str(getattr(args, "prompt_cache_mib", 0))]
        if args.backend == "llamacpp":
            self.cmd += ["--n-threads", str(args.threads)]
        else:
            self.cmd += ["--quantization", args.dtype]

    def load(self, spec) -> dict:
        """Wait for /health to say ready (the app loads --model in the background at start)."""

        def ready(r):
            body = r.json()
            if r.status_code == 200:
                m = body["model"]
                return {k: m.get(k) for k in ("name", "backend", "quantization", "device", "details")}
            if body.get("last_error"):
                raise RuntimeError(f"the app could not load the model: {body['last_error']}")
            return None

        return self._wait_healthy(ready, 600)


class LlamaServer(_ServerProcess):
    """llama.cpp's own llama-server (benchmarks/build_llama_tools.sh builds it from the llama.cpp that the
    pinned llama-cpp-python vendors) with the app's GGUF, threads and batch slots: ``-np`` slots of
    ``n_ctx`` tokens each (llama-server splits ``-c`` between its slots), flash attention ``auto`` (the default
    of both: on for the CPU; a different kernel would flip some greedy tokens), weight repacking off where the app turns it off (AMX CPUs, see
    backends/llamacpp/open.py), and its host-memory prompt cache (``--cache-ram``) the size of the app's
    (``--prompt-cache-mib``; the benchmarks' default 0 turns both off: every path then meets each prompt
    cold, as the raw engine does, whatever earlier phases sent the app)."""

    name = "llama-server"
    model_name = "default"

    def __init__(self, binary: str | Path, model_path: Path, n_ctx: int, n_threads: int, parallel: int,
                 cache_ram_mib: int = 0):
        from backends.llamacpp.open import cpu_has_amx
        from backends.omp_env import environ_without_policy

        super().__init__()
        self.env = environ_without_policy()  # llama-server with libgomp's defaults, as its users run it
        self.binary = Path(binary)
        self.cmd = [str(self.binary), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(self.port),
                    "-t", str(n_threads), "-tb", str(n_threads), "-np", str(parallel), "-c", str(n_ctx * parallel),
                    "-fa", "auto", "-a", self.model_name, "--no-webui", "--cache-ram", str(cache_ram_mib)]
        if cpu_has_amx():
            self.cmd.append("--no-repack")

    def wait_ready(self) -> None:
        self._wait_healthy(lambda r: True if r.status_code == 200 else None, 300)

    def version(self) -> str | None:
        try:
            out = subprocess.run([str(self.binary), "--version"], capture_output=True, text=True, timeout=30)
            return next((line.strip() for line in (out.stdout + out.stderr).splitlines()
                         if line.startswith("version")), None)
        except (OSError, subprocess.SubprocessError):
            return None
