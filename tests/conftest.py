"""Shared fixtures: the embedded model, real backends, and the real app on a free port."""

from __future__ import annotations

import os
import shutil
import tempfile
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# A fresh cache per test session (derived checkpoints, GGUF variants), so the code that makes them runs
# every time; removed at the end. Subprocesses (python app.py, the engine) inherit it. Test modules
# that `from tests.conftest import ...` import this file a second time (as `tests.conftest` beside
# pytest's `conftest`): that copy reuses this process's cache instead of making (and leaking) another.
_OWNER = os.environ.get("_QUANTLAB_TEST_CACHE_OWNER", "")
if _OWNER.startswith(f"{os.getpid()}:"):
    _SESSION_CACHE = _OWNER.split(":", 1)[1]
else:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="quantlab-test-cache-")
    os.environ["_QUANTLAB_TEST_CACHE_OWNER"] = f"{os.getpid()}:{_SESSION_CACHE}"
os.environ["QUANTLAB_CACHE_DIR"] = _SESSION_CACHE
warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams  # noqa: E402
from backends.files.sources import default_cache_dir, embedded_model_path  # noqa: E402

PROMPT = (Message("user", "Name three colours of the rainbow."),)


def greedy(max_new_tokens: int = 32, messages=PROMPT) -> ChatRequest:
    return ChatRequest(tuple(messages), SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=0))


def long_request() -> ChatRequest:
    """A greedy request whose answer runs far past a few tokens (for cancellation tests)."""
    return ChatRequest((Message("user", "Count from 1 to 300, separated by commas."),),
                       SamplingParams(max_new_tokens=1500, temperature=0.0))


def cancel_mid_stream(backend, after: int = 3):
    """Start a long generation, set its cancel event after ``after`` deltas; returns (the deltas
    that still came, seconds from cancel to the end of the stream)."""
    import threading

    cancel = threading.Event()
    stream = backend.stream(long_request(), cancel)
    for i, _ in enumerate(stream):
        if i == after:
            break
    t0 = time.perf_counter()
    cancel.set()
    rest = list(stream)
    return rest, time.perf_counter() - t0


def make_manager(**kwargs):
    """A ModelManager with its own MetricsRecorder (what create_app gives it)."""
    from backends.manager import ModelManager
    from monitoring.metrics import MetricsRecorder

    return ModelManager(metrics=MetricsRecorder(), **kwargs)


def make_services(manager, stream_interval_s: float | None = None):
    """The UI/API operations over ``manager``, wired as create_app wires them."""
    from optimization.lab import Lab
    from serving.chat_service import ChatService
    from serving.services import Services

    chat = ChatService(manager) if stream_interval_s is None else ChatService(manager, stream_interval_s=stream_interval_s)
    base = ModelSpec(source="embedded", backend="llamacpp")
    return Services(manager, chat, Lab(manager, base_spec=base), base)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the browser tests put their screenshots: $QUANTLAB_SCREENSHOTS (docs/ when refreshing them)
    or a temporary folder."""
    d = Path(os.environ.get("QUANTLAB_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """This session's fresh cache directory (see QUANTLAB_CACHE_DIR above)."""
    return default_cache_dir()


@pytest.fixture(scope="session")
def embedded_gguf() -> Path:
    return embedded_model_path()


@pytest.fixture(scope="session")
def llama_backend(cache_dir):
    from backends.llamacpp.backend import LlamaCppBackend

    b = LlamaCppBackend(cache_dir)
    b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048, parallel=1))
    yield b
    b.unload()


from app import LiveServer, free_port  # noqa: E402,F401 - re-exported for the tests
from tests.live_server import make_settings  # noqa: E402,F401 - re-exported for the tests


@pytest.fixture(scope="session")
def live_app(cache_dir):
    """App serving the embedded model (llama.cpp), shared by the API tests."""
    with LiveServer(make_settings(cache_dir=cache_dir)) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048))
        yield srv


@pytest.fixture(scope="session")
def live_oai(live_app):
    """The real openai client on ``live_app``'s /v1 (generous timeout: on a loaded 2-core machine a
    40-token reply can take minutes; idle, well under a second)."""
    import openai

    c = openai.OpenAI(base_url=live_app.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    yield c
    c.close()


@pytest.fixture(scope="session")
def client(live_app):
    from gradio_client import Client

    c = Client(live_app.url, verbose=False)
    yield c
    c.close()


@pytest.fixture(scope="session")
def engine(embedded_gguf, tmp_path_factory):
    """python -m llama_cpp.server on a free port (a real engine process)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("engine") / "engine.log", "w+")  # noqa: SIM115 - a pipe would fill up and block it
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.llama_cpp_server", "--model", str(embedded_gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2-remote", "--api_key", "engine-secret"],
        stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url + "/models", headers={"Authorization": "Bearer engine-secret"}).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"engine died: {log.read()[-2000:]}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


# The end-to-end tier: a test that uses a real model, engine or server is "slow", by the fixtures it
# asks for (so the mark cannot drift from what a test really does); modules that start their own
# servers or browsers mark themselves with ``pytestmark = pytest.mark.slow``.
HEAVY_FIXTURES = {"live_app", "client", "llama_backend", "engine", "cache_dir", "embedded_gguf", "hf_fp32", "batched"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


_EXIT: dict[str, int] = {}


def engine_threads() -> list[threading.Thread]:
    """Non-daemon threads that would keep the interpreter alive. Executor workers are left out:
    concurrent.futures and asyncio shut their pools down at exit themselves."""
    return [t for t in threading.enumerate()
            if not t.daemon and t is not threading.main_thread() and t.is_alive()
            and not t.name.startswith(("ThreadPoolExecutor", "asyncio_"))]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
    _EXIT["status"] = int(exitstatus)


def pytest_unconfigure(config):
    """A model left loaded keeps its engine's non-daemon thread (transformers' batch loop) alive, and
    the interpreter would wait for it forever: say which, and fail instead of hanging."""
    leaked = engine_threads()
    for t in leaked:
        t.join(timeout=2)
    leaked = [t.name for t in leaked if t.is_alive()]
    if leaked:
        sys.stderr.write(f"\nnon-daemon threads still running at exit (a model was not unloaded): {leaked}\n")
        sys.stderr.flush()
        os._exit(_EXIT.get("status") or 1)


def require_or_skip(reason: str) -> None:
    """A tool an end-to-end test needs is missing: a skip on a developer's machine, a failure in CI
    (QUANTLAB_REQUIRE_E2E=1, set by .ci/run), so CI is never green with those tests unrun."""
    if os.environ.get("QUANTLAB_REQUIRE_E2E") == "1":
        pytest.fail(f"QUANTLAB_REQUIRE_E2E=1: {reason}")
    pytest.skip(reason)
