"""Threads and the OpenMP wait policy: what the policy chose is visible (/health, the load details) and
honoured (the llama.cpp context's and torch's thread counts), a second engine does not change the first
engine's, and the wait policy is in the environment before libgomp loads (libgomp reads it once, then).

No timing here: the speed on a shared CPU is benchmarks/bench_shared_cpu.py's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from backends.base import ModelSpec
from backends.threads import choose, parse_threads, usable_cpus
from tests.conftest import greedy

ROOT = Path(__file__).resolve().parent.parent
POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def libgomp_settings(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter with OMP_DISPLAY_ENV=VERBOSE: libgomp prints the settings it
    read, once, when it loads. Returns that report (stderr)."""
    e = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    e.update(OMP_DISPLAY_ENV="VERBOSE", **env)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OPENMP DISPLAY ENVIRONMENT BEGIN" in out.stderr  # libgomp did load and report
    return out.stderr + out.stdout


LOAD_ENGINE = ("from backends.llamacpp.backend import LlamaCppBackend; from backends.base import ModelSpec; "
               "b = LlamaCppBackend(); b.load(ModelSpec(source='embedded', backend='llamacpp', parallel=1)); "
               "print('threads', b._llm._ctx.ctx and __import__('llama_cpp').llama_n_threads(b._llm._ctx.ctx)); b.unload()")


@pytest.mark.slow  # a fresh interpreter loading an engine library
def test_the_app_entry_sets_the_spin_policy_before_llama_cpp_loads_libgomp():
    from backends.omp_env import SPIN_COUNT

    # the entry point, then an engine library straight away (libgomp loads here), then a real load
    report = libgomp_settings("import app; import llama_cpp; " + LOAD_ENGINE)
    assert f"GOMP_SPINCOUNT = '{SPIN_COUNT}'" in report


@pytest.mark.slow  # a fresh interpreter loading an engine library
def test_the_backends_package_alone_sets_it_too_and_torch_gets_it():
    from backends.omp_env import SPIN_COUNT

    # any engine module is inside backends/, whose __init__ sets the policy first
    report = libgomp_settings("import backends, torch; torch.ones(64, 64) @ torch.ones(64, 64)")
    assert f"GOMP_SPINCOUNT = '{SPIN_COUNT}'" in report


@pytest.mark.slow  # a fresh interpreter loading an engine library
def test_an_engine_imported_first_is_detected_and_reported():
    """The check above is live: when libgomp loads before the app's module, its own default spin is in
    force, and the app says so in /health's wait-policy details instead of claiming its policy."""
    from backends.omp_env import SPIN_COUNT

    report = libgomp_settings("import llama_cpp; import backends.omp_env as o; print('applied', o.describe()['applied'])")
    assert f"GOMP_SPINCOUNT = '{SPIN_COUNT}'" not in report
    assert "applied False" in report


@pytest.mark.slow  # a fresh interpreter loading an engine library
def test_a_policy_the_user_set_is_kept():
    report = libgomp_settings("import app; import llama_cpp; import backends.omp_env as o; print(o.describe()['source'])",
                              GOMP_SPINCOUNT="1234")
    assert "GOMP_SPINCOUNT = '1234'" in report and "\nuser" in report
    report = libgomp_settings("import app; import llama_cpp", OMP_WAIT_POLICY="active")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in report


def test_threads_values():
    assert parse_threads("auto") is None and parse_threads(0) is None and parse_threads("") is None
    assert parse_threads("3") == 3 and parse_threads(2) == 2 and parse_threads(2.0) == 2
    for bad in ("two", -1, 1.5, 5000, True):
        with pytest.raises(Exception, match="threads"):
            parse_threads(bad)
    assert choose(3).threads == 3 and choose(3).mode == "user"
    auto = choose(None)
    assert auto.mode == "auto" and auto.threads == usable_cpus()[0] >= 1 and auto.why.startswith("auto:")


def test_auto_threads_step_down_while_another_process_keeps_a_core_busy():
    """On 2 cores with a busy process beside it, auto's next decode takes 1 thread (2 would wait for a
    preempted partner at every op), and says so through on_change (the model's /health details)."""
    from backends.threads import AdaptiveThreads

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        changes = []
        adaptive = AdaptiveThreads(2, interval_s=0.5, cpus=2, on_change=lambda n, others: changes.append((n, others)))
        assert adaptive.now() == 2  # no window measured yet: every core
        time.sleep(0.7)
        assert adaptive.now() == 1
        assert changes and changes[-1][0] == 1 and changes[-1][1] >= 0.8
    finally:
        busy.kill()
        busy.wait()


def test_a_pause_between_replies_is_not_taken_for_what_other_processes_use_now():
    """The window since the last decode spans the pause before this reply: what other processes did
    then (another server's reply, a finished build) says nothing of now, so the count measured last
    holds. Measured when it did not: each reply's first quarter second on 1 thread cost 5% against
    llama-server on a quiet machine. A window of normal length is still measured."""
    from backends.threads import AdaptiveThreads, cpu_snapshot

    adaptive = AdaptiveThreads(2, interval_s=1.0, cpus=2)
    t, busy, own = cpu_snapshot()
    adaptive._last = (t - 10.0, busy - 10.0, own)  # a 10-second pause in which others kept one core busy
    assert adaptive.now() == 2
    t, busy, own = adaptive._last
    adaptive._last = (t - 1.2, busy - 1.2, own)  # a window of normal length, the same share of a core
    assert adaptive.now() == 1


def test_a_decode_longer_than_the_window_is_still_measured():
    """A big model on the CPU can take seconds for one decode: a long window in which this process computed
    is no pause, and what other processes took in it still sizes the next decode."""
    from backends.threads import AdaptiveThreads, cpu_snapshot

    adaptive = AdaptiveThreads(2, interval_s=1.0, cpus=2)
    t, busy, own = cpu_snapshot()
    # a 10-second decode: this process used a core (10 s of CPU) and others another one (20 s busy in all)
    adaptive._last = (t - 10.0, busy - 20.0, own - 10.0)
    assert adaptive.now() == 1


def test_the_cli_takes_threads_auto_or_a_number():
    from serving.settings import parse_args

    assert parse_args([]).n_threads is None
    assert parse_args(["--threads", "auto"]).n_threads is None
    assert parse_args(["--threads", "1"]).n_threads == 1
    assert parse_args(["--n-threads", "3"]).n_threads == 3  # the earlier name keeps working
    with pytest.raises(Exception, match="threads"):
        parse_args(["--threads", "many"])


def n_threads_of(ctx) -> int:
    import llama_cpp

    return int(llama_cpp.llama_n_threads(ctx))


def test_llama_cpp_user_threads_are_exact_and_a_second_engine_leaves_them(cache_dir):
    from backends.llamacpp.backend import LlamaCppBackend

    first, second = LlamaCppBackend(cache_dir), LlamaCppBackend(cache_dir)
    try:
        info = first.load(ModelSpec(source="embedded", backend="llamacpp", parallel=1, n_threads=1))
        assert (info.details["n_threads"], info.details["threads_mode"]) == (1, "user")
        assert n_threads_of(first._llm._ctx.ctx) == 1
        info2 = second.load(ModelSpec(source="embedded", backend="llamacpp", parallel=2))  # auto, batched
        assert info2.details["threads_mode"] == "auto" and info2.details["n_threads"] == usable_cpus()[0]
        assert "n_threads_now" in info2.details and "omp_wait_policy" in info2.details
        list(second.stream(greedy(8), threading.Event()))
        assert 1 <= n_threads_of(second._engine.ctx) <= usable_cpus()[0]
        # the first engine still computes with exactly what its user asked, also after generating
        assert n_threads_of(first._llm._ctx.ctx) == 1
        assert "".join(d.text for d in first.stream(greedy(8), threading.Event())).strip()
        assert n_threads_of(first._llm._ctx.ctx) == 1
        first.logits(first.tokenize("Hello there"))  # the scoring context takes the same count
        assert n_threads_of(first._logits_llm._ctx.ctx) == 1
    finally:
        first.unload()
        second.unload()


def test_torch_threads_are_the_models_own_on_every_thread_that_computes(cache_dir):
    """Two transformers models in one process with different counts: each one's forward passes run with
    its own (torch keeps a thread count per computing thread; each model sets its own first)."""
    import torch

    from backends.hf.backend import TransformersBackend

    one, two = TransformersBackend(cache_dir), TransformersBackend(cache_dir)
    seen: dict[str, list[int]] = {"one": [], "two": []}
    try:
        info = one.load(ModelSpec(source="embedded", backend="transformers", quantization="fp32", parallel=1,
                                  n_threads=1))
        assert (info.details["n_threads"], info.details["threads_mode"]) == (1, "user")
        two.load(ModelSpec(source="embedded", backend="transformers", quantization="fp32", parallel=2, n_threads=2))
        for name, b in (("one", one), ("two", two)):
            b._model.register_forward_hook(lambda m, i, o, name=name: seen[name].append(torch.get_num_threads()))
        list(two.stream(greedy(4), threading.Event()))  # the batch's generation thread
        list(one.stream(greedy(4), threading.Event()))  # a generate() thread
        out: list = []
        t = threading.Thread(target=lambda: (two.logits([1, 2, 3]), one.logits([1, 2, 3]), out.append(1)))
        t.start()
        t.join()  # one thread scoring with both models in turn
        assert out and seen["one"] and seen["two"]
        assert set(seen["one"]) == {1}
        assert set(seen["two"]) == {2}
    finally:
        one.unload()
        two.unload()


@pytest.fixture(scope="module")
def threads_app(cache_dir):
    from app import LiveServer
    from tests.live_server import make_settings

    with LiveServer(make_settings(n_threads=None)) as live:
        live.manager.load(ModelSpec(source="embedded", backend="llamacpp", parallel=1))
        yield live


def test_health_says_what_auto_chose_and_load_model_honours_a_number(threads_app):
    from gradio_client import Client

    model = httpx.get(threads_app.url + "/health").json()["model"]
    assert model["threads_mode"] == "auto" and model["n_threads"] == usable_cpus()[0]
    assert "physical core" in model["threads_why"]
    assert model["omp_wait_policy"]["applied"] is True and model["omp_wait_policy"]["env"]["GOMP_SPINCOUNT"]

    client = Client(threads_app.url, verbose=False)
    try:
        # the existing positional order: model, backend, quantization, api_base, api_key, gguf_file, n_ctx,
        # parallel, n_threads
        client.predict("embedded", "llamacpp", "", "", "", "", 0, 1, 1, api_name="/load_model")
        model = httpx.get(threads_app.url + "/health").json()["model"]
        assert (model["n_threads"], model["threads_mode"]) == (1, "user")
        ctx = threads_app.manager._resident.backend._llm._ctx.ctx
        assert n_threads_of(ctx) == 1
        client.predict("embedded", "llamacpp", "", "", "", "", 0, 1, 0, api_name="/load_model")  # 0 = auto
        assert httpx.get(threads_app.url + "/health").json()["model"]["threads_mode"] == "auto"
        with pytest.raises(Exception, match="threads"):
            client.predict("embedded", "llamacpp", "", "", "", "", 0, 1, -2, api_name="/load_model")
        assert httpx.get(threads_app.url + "/health").json()["model"]["threads_mode"] == "auto"  # still loaded
    finally:
        client.close()
