"""/load_model beside running work, through the real app, gradio_client and the openai client with
the embedded model: a load whose memory estimate does not fit is refused before anything is
touched (the model loaded keeps serving), and a load while /v1 replies stream lets them finish on
the old model (an unload that must cut them ends them with an error the client sees)."""

from __future__ import annotations

import threading

import openai
import psutil
import pytest
from gradio_client import Client

from backends.files.sources import embedded_model_path
from optimization.estimates import estimate_load
from tests.conftest import LiveServer, make_settings

COUNT = [{"role": "user", "content": "Count from 1 to 300, separated by commas."}]


def load(c: Client, n_ctx: int = 0, parallel: int = 0) -> str:
    return c.predict("embedded", "llamacpp", "as file", "", "", "", n_ctx, parallel, api_name="/load_model")


def load_error(c: Client, n_ctx: int, parallel: int) -> str:
    with pytest.raises(Exception) as err:
        load(c, n_ctx, parallel)
    return str(err.value)


def still_serves(url: str, model: str) -> str:
    oai = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
    out = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                      temperature=0)
    assert out.choices[0].message.content and out.usage.completion_tokens > 0
    return out.model


def test_a_load_over_the_memory_budget_is_refused_and_the_old_model_serves(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, memory_budget_mib=512)) as srv:
        c = Client(srv.url, verbose=False)
        try:
            assert "Loaded" in load(c, 1024, 1)
            before = srv.manager.current
            msg = load_error(c, 16384, 2)  # ~750 MiB of KV cache alone: over the 512 MiB budget
            assert "needs about" in msg and "16384 ctx x 2 slots" in msg, msg
            assert "--memory-budget-mib 512" in msg and "Lower n_ctx or parallel" in msg, msg
            assert srv.manager.current is before and srv.manager.status()["last_error"] is None
            assert c.predict(api_name="/model_status")["options"]["n_ctx"] == 1024
            still_serves(srv.url, before.name)
        finally:
            c.close()


def test_a_load_larger_than_the_free_memory_is_refused(cache_dir):
    n_ctx, parallel = 1 << 20, 8
    need = estimate_load(embedded_model_path(), "as file", n_ctx, parallel).total
    if need < psutil.virtual_memory().available:
        pytest.skip("this machine has more free memory than the absurd load needs")
    with LiveServer(make_settings(cache_dir=cache_dir)) as srv:
        c = Client(srv.url, verbose=False)
        try:
            assert "Loaded" in load(c, 1024, 1)
            before = srv.manager.current
            rss = psutil.Process().memory_info().rss
            msg = load_error(c, n_ctx, parallel)
            assert "needs about" in msg and "available RAM" in msg and "Lower n_ctx" in msg, msg
            assert psutil.Process().memory_info().rss < rss + 2**30  # nothing was allocated for it
            assert srv.manager.current is before
            still_serves(srv.url, before.name)
        finally:
            c.close()


def _stream(url: str, model: str, max_tokens: int, out: dict, first: threading.Event) -> None:
    oai = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=1500)
    text, finish, usage = [], None, None
    try:
        for chunk in oai.chat.completions.create(model=model, messages=COUNT, max_tokens=max_tokens, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}):
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
            if len(text) >= 6:
                first.set()
    except Exception as exc:  # noqa: BLE001 - what the client saw is the result
        out["error"] = exc
    finally:
        out.update(text="".join(text), finish=finish, usage=usage)
        first.set()


@pytest.mark.timeout(1800)
def test_a_load_lets_running_v1_streams_finish_on_the_old_model(cache_dir):
    # a drain bound no slow machine reaches: the test is about finishing, not about speed
    with LiveServer(make_settings(cache_dir=cache_dir, load_drain_timeout=1500)) as srv:
        c = Client(srv.url, verbose=False)
        try:
            assert "Loaded" in load(c, 2048, 2)
            name = srv.manager.current.name
            out: dict = {}
            first = threading.Event()
            t = threading.Thread(target=_stream, args=(srv.url, name, 120, out, first), daemon=True)
            t.start()
            assert first.wait(300) and "error" not in out
            status = load(c, 1024, 1)  # another variant of the same model, while the stream runs
            assert status.startswith("Loaded"), status
            t.join(1500)
            assert "error" not in out, out.get("error")
            assert out["finish"] == "length" and out["usage"].completion_tokens == 120, out
            assert c.predict(api_name="/model_status")["options"]["n_ctx"] == 1024  # the new model serves
            assert still_serves(srv.url, name) == name
            assert srv.manager.status()["finishing"] == []
        finally:
            c.close()


def test_an_unload_that_cuts_a_v1_stream_ends_it_with_a_visible_error(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir)) as srv:
        c = Client(srv.url, verbose=False)
        try:
            assert "Loaded" in load(c, 2048, 1)
            out: dict = {}
            first = threading.Event()
            t = threading.Thread(target=_stream, args=(srv.url, srv.manager.current.name, 1000, out, first),
                                 daemon=True)
            t.start()
            assert first.wait(300) and "error" not in out
            assert "Unloaded" in c.predict(api_name="/unload_model")
            t.join(300)
            # never a short reply that looks finished: the client sees why it ended
            assert "error" in out or out["finish"] == "error", out
            assert out["finish"] not in ("stop", "length"), out
            assert "was unloaded while this reply was running" in str(out.get("error", "")), out
        finally:
            c.close()
