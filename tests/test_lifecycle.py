"""The app as a user runs it: `python app.py`, /health while loading, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def test_python_app_py_serves_the_embedded_model_and_stops_gracefully(tmp_path, cache_dir):
    port = free_port()
    env = {**os.environ, "QUANTLAB_PORT": str(port), "QUANTLAB_CACHE_DIR": str(cache_dir), "QUANTLAB_REQUEST_LOG": ""}
    log = open(tmp_path / "app.log", "w+")  # noqa: SIM115
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        codes = []
        while time.perf_counter() - t0 < 90:
            try:
                r = httpx.get(url + "/health", timeout=2)
                codes.append(r.status_code)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "the app died"
            time.sleep(0.05)
        ready = time.perf_counter() - t0
        print(f"\nstartup to /health 200: {ready:.1f} s (codes seen: {sorted(set(codes))})")
        assert codes[-1] == 200
        assert set(codes[:-1]) <= {503}, f"before ready, /health must say 503 (loading), saw {codes}"
        assert r.json()["model"]["name"].startswith("SmolLM2-135M-Instruct")

        # a long stream is running when SIGTERM arrives: it is allowed to finish
        body = {"model": "default", "messages": [{"role": "user", "content": "Count from 1 to 40."}],
                "max_tokens": 60, "temperature": 0, "stream": True}
        received: list[str] = []
        # what the drained stream must end with: the same request, not streamed
        full = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False}, timeout=60).json()["choices"][0]

        def stream():
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as s:
                for line in s.iter_lines():
                    received.append(line)

        t = threading.Thread(target=stream)
        t.start()
        deadline = time.time() + 30
        while not any(line.startswith("data:") for line in received):
            assert time.time() < deadline, "the stream never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=60)
        assert proc.wait(timeout=40) == 0
        assert received[-1] == "data: [DONE]" or received[-2:] == ["data: [DONE]", ""]
        chunks = [json.loads(x[5:]) for x in received if x.startswith("data:") and x != "data: [DONE]"]
        # drained, not cut: the whole reply and its real finish reason
        assert chunks[-1]["choices"][0]["finish_reason"] == full["finish_reason"]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == full["message"]["content"]
        try:
            httpx.get(url + "/health", timeout=1)
            raise AssertionError("still accepting connections after SIGTERM")
        except httpx.HTTPError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
