"""Regression tests for issue 12's worst findings: --models-dir escapes through a relative path,
the remote backend as an SSRF probe, what unauthenticated callers can read, and streams cut at
shutdown. Real app, real clients, 127.0.0.1 only."""

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
from gradio_client import Client

from backends.base import ModelSpec
from backends.files.sources import embedded_model_path
from tests.conftest import LiveServer, free_port, make_settings
from tests.live_server import wait_healthy

pytestmark = pytest.mark.slow


def predict_error(client: Client, *args, api_name: str) -> str:
    with pytest.raises(Exception) as err:
        client.predict(*args, api_name=api_name)
    return str(err.value)


@pytest.fixture
def server_cwd(tmp_path, monkeypatch):
    """The server's working directory holds a real README.md and a real model.gguf; its
    --models-dir holds an empty README.md and a model.gguf that is a text file."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "README.md").write_text("")
    (models / "model.gguf").write_text("this is not a model\n")
    (tmp_path / "README.md").write_text("The server's own README. " * 400)
    os.symlink(embedded_model_path(), tmp_path / "model.gguf")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_models_dir_relative_names_open_the_file_inside_it(server_cwd):
    settings = make_settings(listen=True, models_dir=server_cwd / "models")
    with LiveServer(settings) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=1))
        before = srv.manager.current
        c = Client(srv.url, verbose=False)
        try:
            # the backend opens models/model.gguf (a text file), not ./model.gguf (a real model)
            msg = predict_error(c, "model.gguf", "llamacpp", "as file", "", "", "", api_name="/load_model")
            assert "not a GGUF model file" in msg
            msg = predict_error(c, "model.gguf", "llamacpp", "Q8_0", "", "", "", api_name="/load_model")
            assert "not a GGUF model file" in msg
            # the evaluation text is models/README.md (empty), not the server's README.md
            msg = predict_error(c, ["llamacpp:Q4_1"], "README.md", 256, "embedded", "llamacpp:Q4_1", 64,
                                api_name="/evaluate")
            assert "one window needs 64" in msg and "is 0 tokens" in msg or "is 1 tokens" in msg, msg
            msg = predict_error(c, ["llamacpp:Q4_1"], "../README.md", 256, "embedded", "llamacpp:Q4_1", 64,
                                api_name="/evaluate")
            assert "must be inside the models directory" in msg
        finally:
            c.close()
        assert srv.manager.current is before


def test_corrupt_gguf_header_is_named_not_out_of_memory(tmp_path):
    import struct

    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 5, 2**40) + b"\0" * 4096)
    with LiveServer(make_settings(cache_dir=tmp_path / "cache")) as srv:
        c = Client(srv.url, verbose=False)
        try:
            for quant in ("as file", "Q8_0"):
                msg = predict_error(c, str(bad), "llamacpp", quant, "", "", "", api_name="/load_model")
                assert "not a valid GGUF file" in msg and "memory" not in msg.lower(), msg
        finally:
            c.close()


def test_remote_backend_is_no_ssrf_probe(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with LiveServer(make_settings(listen=True, models_dir=tmp_path)) as exposed:
        c = Client(exposed.url, verbose=False)
        try:
            for target in (dead, exposed.url + "/v1", "http://169.254.169.254/latest/meta-data"):
                msg = predict_error(c, "m", "remote", "as served", target, "", api_name="/load_model")
                assert "does not allow that remote engine" in msg and "--allow-remote" in msg
        finally:
            c.close()
    with LiveServer(make_settings(listen=True, models_dir=tmp_path, allow_remote=[dead])) as allowed:
        c = Client(allowed.url, verbose=False)
        try:
            msg = predict_error(c, "m", "remote", "as served", dead, "", api_name="/load_model")
            assert "Remote engine unreachable" in msg  # allowed, so tried (and down)
            host_port = dead.removesuffix("/v1")
            lookalike = host_port + ".evil.example/v1"  # the allowed prefix as a string, another host
            for other in (lookalike, host_port + "/admin", host_port.replace("http:", "https:") + "/v1"):
                msg = predict_error(c, "m", "remote", "as served", other, "", api_name="/load_model")
                assert "does not allow" in msg or "not a valid URL" in msg, (other, msg)
        finally:
            c.close()
    # On loopback every base is allowed, but a refused port, a live non-engine port and an error
    # status all read the same, and the target's body is never shown.
    with LiveServer(make_settings()) as local:
        c = Client(local.url, verbose=False)
        try:
            answers = {predict_error(c, "m", "remote", "as served", target, "", api_name="/load_model")
                       .replace(target.rstrip("/") + "/v1", "<base>").replace(target.rstrip("/"), "<base>")
                       for target in (dead, local.url + "/nothing", local.url + "/gradio_api")}
            assert len(answers) == 1, answers
            assert "unreachable" in answers.pop()
        finally:
            c.close()


def test_unauthenticated_callers_see_status_only(tmp_path):
    settings = make_settings(auth="alice:wonderland", api_base="http://internal-engine.local:9000/v1",
                             cache_dir=tmp_path)
    with LiveServer(settings) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=1))
        page = httpx.get(srv.url + "/", follow_redirects=True).text
        assert "internal-engine" not in page
        anon = httpx.get(srv.url + "/health")
        assert anon.status_code == 200 and anon.json() == {"status": "ready"}
        full = httpx.get(srv.url + "/health", auth=("alice", "wonderland")).json()
        assert full["model"]["source"].endswith(".gguf") and "last_error" in full


def test_shutdown_past_the_timeout_cuts_streams_in_band_and_exits_nonzero(tmp_path):
    port = free_port()
    env = dict(os.environ, QUANTLAB_REQUEST_LOG="")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--shutdown-timeout", "1",
                             "--parallel", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        lines: list[str] = []
        started = threading.Event()

        def read():
            body = {"model": "default", "stream": True, "max_tokens": 1500, "temperature": 0,
                    "messages": [{"role": "user", "content": "Count from 1 to 300, separated by commas."}]}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                        started.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert started.wait(30)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        reader.join(timeout=30)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-2000:]
    assert "stream(s) still running after --shutdown-timeout" in out and "1 stream" in out
    events = [json.loads(line[5:]) for line in lines if line.startswith("data:") and "[DONE]" not in line]
    errors = [e["error"] for e in events if "error" in e]
    assert errors and errors[0]["code"] == "server_shutting_down", lines[-5:]
    finishes = [e["choices"][0]["finish_reason"] for e in events if e.get("choices")
                and e["choices"][0]["finish_reason"]]
    assert finishes == ["error"]
    assert lines[-1] == "data: [DONE]"
