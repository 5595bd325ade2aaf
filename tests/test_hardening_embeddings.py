"""Regression tests: /v1/embeddings and /detokenize could tie up the engine for minutes (issue 31,
items 5 and 6). Embeddings have a per-request token budget, stop when their client goes away, run in
the model's slots (recorded like any generation) and never hold up a shutdown; /detokenize is linear.
Real app, the real ``openai`` client, the embedded model; no timed assertions (timeouts are liveness
bounds only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import httpx
import openai
import pytest

from backends.base import ModelSpec
from tests.conftest import LiveServer, free_port, make_settings
from tests.live_server import wait_for, wait_healthy

pytestmark = pytest.mark.slow

# About 480 tokens each (under the 512 an input may take), different from each other.
LONG_INPUT = " ".join(f"sentence {i} about quantization and embeddings." for i in range(49))


def long_inputs(n: int) -> list[str]:
    return [f"{k}: {LONG_INPUT}" for k in range(n)]


def openai_client(url: str, timeout: float) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=timeout, max_retries=0)


def log_records(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- item 5: embeddings ---------------------------------------------------------------------------

def test_an_embeddings_request_over_the_token_budget_is_refused_before_any_work(live_app):
    """The issue's request: 64 inputs of 700 characters, within every other limit, took 417 s."""
    client = openai_client(live_app.url, timeout=120)
    texts = [(f"text {i}: " + "the quick brown fox jumps over the lazy dog " * 20)[:700] for i in range(64)]
    budget = live_app.settings.max_embed_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="default", input=texts)
    assert err.value.status_code == 400
    message = err.value.body["message"]
    assert f"{budget:,} tokens" in message and "--max-embed-tokens" in message, message
    assert err.value.body["param"] == "input"
    ok = client.embeddings.create(model="default", input=texts[:2])  # the server still serves
    assert len(ok.data) == 2 and len(ok.data[0].embedding) > 100
    assert 0 < ok.usage.prompt_tokens <= budget


def test_embeddings_are_recorded_like_generations(live_app):
    before = live_app.manager.metrics.total
    client = openai_client(live_app.url, timeout=120)
    ok = client.embeddings.create(model="default", input=["one text", "another text"])
    rec = wait_for(lambda: [s for s in live_app.manager.metrics.recent(20) if s.endpoint == "embeddings"],
                   60, "an embeddings record")[-1]
    assert live_app.manager.metrics.total > before
    assert rec.outcome == "ok" and rec.finish_reason == "stop"
    assert rec.prompt_tokens == ok.usage.prompt_tokens


def test_a_disconnected_embeddings_request_stops_and_the_engine_serves_a_chat(tmp_path, cache_dir):
    log = tmp_path / "requests.jsonl"
    settings = make_settings(cache_dir=cache_dir, request_log=str(log), max_embed_tokens=1 << 20,
                             max_prompt_chars=2_000_000)
    with LiveServer(settings) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=1024, parallel=1))
        texts = long_inputs(256)  # ~120,000 tokens: minutes of CPU
        requested = sum(len(srv.manager.tokenize(t)) for t in texts)
        # The client gives up after a few seconds (its timeout is only how the client leaves).
        with pytest.raises(openai.APITimeoutError):
            openai_client(srv.url, timeout=3).embeddings.create(model="default", input=texts)
        records = wait_for(lambda: [r for r in log_records(log) if r["endpoint"] == "embeddings"], 300,
                           "the embeddings request's end")
        # A chat queued behind the same (single) model slot is served.
        reply = openai_client(srv.url, timeout=300).chat.completions.create(
            model="default", max_tokens=8, temperature=0, messages=[{"role": "user", "content": "Say hi."}])
        assert reply.choices[0].message.content
        assert srv.manager.metrics.running == 0
    rec = records[0]
    assert rec["outcome"] == "cancelled" and rec["finish_reason"] == "cancelled", rec
    assert rec["prompt_tokens"] < requested, rec  # fewer tokens embedded than the request asked for


def test_sigterm_during_a_long_embeddings_request_exits(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, QUANTLAB_REQUEST_LOG="")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--shutdown-timeout", "1",
                             "--parallel", "1", "--max-embed-tokens", "1000000", "--max-prompt-chars", "2000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    outcome: list = []

    def embed():
        try:
            openai_client(url, timeout=600).embeddings.create(model="default", input=long_inputs(256))
            outcome.append("finished")
        except Exception as exc:  # noqa: BLE001 - the server went away: expected
            outcome.append(exc)

    try:
        wait_healthy(url, proc)
        worker = threading.Thread(target=embed, daemon=True)
        worker.start()

        def running() -> bool:
            text = httpx.get(url + "/metrics").text
            return any(line.startswith("quantlab:num_requests_running") and not line.rstrip().endswith(" 0.0")
                       for line in text.splitlines())

        wait_for(running, 120, "the embeddings request to start")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)  # liveness: the process ends (it used to hang in close)
        worker.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode is not None
    assert outcome and outcome[0] != "finished", outcome  # it was stopped, not run to the end


# --- item 6: /detokenize --------------------------------------------------------------------------

# Text whose tokens include long whitespace pieces (over 32 bytes), which the library's detokenizer
# used to drop, and multi-byte characters.
ROUND_TRIP = "".join(f"def f{i}():\n" + " " * 40 + f"return 'wörld {i} 日本'\n\n" for i in range(2500))


def test_detokenize_looks_each_token_up_once_and_never_uses_the_quadratic_library_call(llama_backend, monkeypatch):
    import llama_cpp
    from llama_cpp import _internals

    calls = [0]
    piece = llama_cpp.llama_token_to_piece

    def counted(*args):
        calls[0] += 1
        return piece(*args)

    def quadratic(*args, **kwargs):
        raise AssertionError("llama-cpp-python's detokenize re-copies the whole prefix for every token")

    monkeypatch.setattr(llama_cpp, "llama_token_to_piece", counted)
    monkeypatch.setattr(_internals.LlamaModel, "detokenize", quadratic)
    tokens = llama_backend.tokenize(ROUND_TRIP)
    ids = (tokens * (150_000 // len(tokens) + 1))[:150_000]
    text = llama_backend.detokenize(ids)
    assert calls[0] < 2 * len(ids)  # one lookup per token (a few more for pieces longer than the buffer)
    assert text.startswith(ROUND_TRIP[:1000])


def test_detokenize_round_trips_a_large_text_and_serves_150k_tokens(live_app):
    tokens = httpx.post(live_app.url + "/tokenize", json={"content": ROUND_TRIP, "add_special": False},
                        timeout=300).json()["tokens"]
    assert len(tokens) > 20_000
    back = httpx.post(live_app.url + "/detokenize", json={"tokens": tokens}, timeout=300).json()
    assert back == {"content": ROUND_TRIP}
    repeat = 150_000 // len(tokens) + 1
    big = httpx.post(live_app.url + "/detokenize", json={"tokens": tokens * repeat}, timeout=300)  # liveness bound
    assert big.status_code == 200 and big.json()["content"] == ROUND_TRIP * repeat


def test_detokenize_over_the_limit_is_refused(live_app):
    limit = live_app.settings.max_prompt_chars
    r = httpx.post(live_app.url + "/detokenize", json={"tokens": [1] * (limit + 1)}, timeout=120)
    assert r.status_code == 400
    assert "--max-prompt-chars" in r.json()["error"]["message"] and r.json()["error"]["param"] == "tokens"
