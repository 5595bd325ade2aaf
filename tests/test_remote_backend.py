"""The remote backend against a real OpenAI-compatible engine (llama-cpp-python's server on
127.0.0.1 serving the embedded model), and the app fronting it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from gradio_client import Client

from backends.base import ChatRequest, ModelSpec, SamplingParams
from backends.errors import BackendUnavailable, ModelNotFound
from backends.remote import RemoteBackend
from tests.conftest import LiveServer, cancel_mid_stream, free_port, greedy, long_request, make_settings


def spec(url: str, **kw) -> ModelSpec:
    return ModelSpec(source="smollm2-remote", backend="remote", api_base=url, api_key="engine-secret", **kw)


def test_streams_through_the_engine_and_matches_its_non_streamed_answer(engine):
    b = RemoteBackend()
    info = b.load(spec(engine))
    assert info.device == "remote" and info.name == "smollm2-remote"
    deltas = list(b.stream(greedy(32), threading.Event()))
    text = "".join(d.text for d in deltas)
    raw = openai.OpenAI(base_url=engine, api_key="engine-secret").chat.completions.create(
        model="smollm2-remote", messages=[{"role": "user", "content": greedy().messages[0].content}],
        max_tokens=32, temperature=0, top_p=0.95)
    assert text == raw.choices[0].message.content
    assert sum(d.tokens for d in deltas) == raw.usage.completion_tokens
    # llama-cpp-python's server sends no usage in streams (vLLM and llama.cpp's server do): then the
    # prompt size is honestly unknown (0), never guessed.
    assert deltas[-1].prompt_tokens in (0, raw.usage.prompt_tokens)
    b.unload()


def test_cancel_closes_the_stream_quickly(engine):
    b = RemoteBackend()
    b.load(spec(engine))
    rest, took = cancel_mid_stream(b)
    assert rest[-1].finish_reason == "cancelled"
    assert took < 1.0
    b.unload()


def test_clear_errors_for_wrong_model_bad_key_and_down_engine(engine):
    with pytest.raises(ModelNotFound, match="does not serve 'llama-70b'"):  # its list stays in the log
        RemoteBackend().load(spec(engine).with_(source="llama-70b"))
    # issue 12: a wrong key and a dead port read the same (no port mapping, no body echoed)
    with pytest.raises(BackendUnavailable, match="Remote engine unreachable"):
        RemoteBackend().load(spec(engine).with_(api_key="wrong"))
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendUnavailable, match="Remote engine unreachable"):
        RemoteBackend().load(spec(dead))


def test_the_app_fronts_the_engine_with_its_ui_api_metrics_and_v1(engine, cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir)) as srv:
        c = Client(srv.url, verbose=False)
        try:
            status = c.predict("smollm2-remote", "remote", "as served", engine, "engine-secret", api_name="/load_model")
            assert "Loaded smollm2-remote" in status
            reply, stats = c.predict("Say hello.", [], "", 16, 0.0, 1.0, 0, 1.0, 0, api_name="/chat")
            assert reply.strip() and stats["completion_tokens"] > 0 and stats["ttft_s"] > 0
            oai = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
            out = oai.chat.completions.create(model="smollm2-remote", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=8, temperature=0)
            assert out.choices[0].message.content
            assert "quantlab:generation_tokens_total" in httpx.get(srv.url + "/metrics").text
            assert httpx.get(srv.url + "/health").json()["model"]["device"] == "remote"
        finally:
            c.close()


def test_engine_going_down_mid_session_is_a_clear_error(embedded_gguf, cache_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.llama_cpp_server", "--model", str(embedded_gguf), "--port",
                             str(port), "--n_ctx", "512"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/models")
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        b = RemoteBackend()
        b.load(ModelSpec(source=url, backend="remote"))
        assert "".join(d.text for d in b.stream(greedy(4), threading.Event()))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    with pytest.raises(BackendUnavailable, match="Lost the remote engine"):
        list(b.stream(ChatRequest(greedy().messages, SamplingParams(max_new_tokens=4)), threading.Event()))


def test_engine_dying_mid_stream_is_an_error_not_a_short_answer(embedded_gguf):
    """A reply cut by the engine's death must not pass for a finished one."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.llama_cpp_server", "--model", str(embedded_gguf), "--port",
                             str(port), "--n_ctx", "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(url + "/models")
                break
            except httpx.HTTPError:
                assert time.time() < deadline, "the engine did not start"
                time.sleep(0.1)
        b = RemoteBackend()
        b.load(ModelSpec(source=url, backend="remote"))
        stream = b.stream(ChatRequest(long_request().messages,
                                      SamplingParams(max_new_tokens=800, temperature=0.0)), threading.Event())
        got = [next(stream) for _ in range(3)]
        assert all(d.tokens == 1 for d in got)
        proc.kill()
        with pytest.raises(BackendUnavailable):
            for _ in stream:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
