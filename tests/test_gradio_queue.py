"""The Gradio queue without its 1 ms poll (ui/gradio_queue.py): events still start, in order, when
pushed to an idle queue, when they wait behind a concurrency limit, and when several come at once;
a job's gr.Progress still reaches the client (the progress loop sleeps while no job runs)."""

from __future__ import annotations

import threading
import time
import warnings

import gradio as gr
import pytest
from gradio_client import Client

from app import LiveServer, free_port
from tests.live_server import make_settings
from ui.gradio_queue import quiet_queue

warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")


@pytest.fixture(scope="module")
def tiny():
    """A Blocks app with one event limited to one job at a time (a slow one) and one unlimited."""
    started: list[str] = []
    lock = threading.Lock()

    def slow(x: str) -> str:
        with lock:
            started.append(x)
        time.sleep(0.3)
        return x.upper()

    def steps(x: str, progress=gr.Progress()) -> str:
        for _ in progress.tqdm(range(6), desc="working"):
            time.sleep(0.25)
        return x

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        gr.Button().click(steps, box, out, api_name="steps", concurrency_limit=None)
        gr.Button().click(slow, box, out, api_name="slow", concurrency_limit=1)
        gr.Button().click(lambda x: x[::-1], box, out, api_name="flip", concurrency_limit=None)
    demo.queue(max_size=16)
    assert quiet_queue(demo)
    assert not quiet_queue(demo)  # applied once
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    # httpx's 5 s default read timeout is not enough for /queue/join on a machine busy with other work
    client = Client(demo.local_url, verbose=False, httpx_kwargs={"timeout": 120})
    try:
        yield client, started
    finally:
        client.close()
        demo.close()


def test_an_event_pushed_to_an_idle_queue_runs(tiny):
    client, _ = tiny
    time.sleep(0.2)  # the processing loop is asleep, waiting for work
    assert client.predict("abc", api_name="/flip") == "cba"
    assert client.predict("xyz", api_name="/flip") == "zyx"


def queued(job, limit_s: float = 120.0) -> None:
    """Wait until the server has taken ``job`` into its queue: /queue/join answers with the event id
    only after the event was appended to the queue, so the next event submitted after this arrives
    after it, however busy the machine (a sleep between submissions only makes that likely). The
    limit only keeps a broken server from hanging the test."""
    end = time.monotonic() + limit_s
    while job.communicator.event_id is None and not job.done():
        if time.monotonic() > end:
            pytest.fail(f"the server did not take the event into its queue within {limit_s:.0f} s")
        time.sleep(0.002)


def test_events_behind_a_concurrency_limit_all_run_in_arrival_order(tiny):
    client, started = tiny
    started.clear()
    jobs = []
    for i in range(4):
        jobs.append(client.submit(f"job{i}", api_name="/slow"))
        queued(jobs[-1])  # arrival order is submission order: each one is in the queue before the next is sent
    assert [j.result(timeout=60) for j in jobs] == [f"JOB{i}" for i in range(4)]
    assert started == [f"job{i}" for i in range(4)]


def test_the_unlimited_event_is_not_held_behind_the_limited_one(tiny):
    client, _ = tiny
    slow = client.submit("s", api_name="/slow")
    assert client.predict("ab", api_name="/flip") == "ba"
    assert not slow.done() or slow.result() == "S"
    assert slow.result(timeout=30) == "S"


def test_a_jobs_progress_reaches_the_client_after_the_queue_was_idle(tiny):
    client, _ = tiny
    time.sleep(1.0)  # long enough for the progress loop to be asleep, waiting for a job
    job = client.submit("p", api_name="/steps")
    seen = []
    while not job.done():
        status = job.status()
        if status.progress_data:
            seen.append(status.progress_data[0].index)
        time.sleep(0.02)
    assert job.result(timeout=60) == "p"
    assert seen, "no progress update reached the client"


def test_the_app_queue_is_patched():
    with LiveServer(make_settings()) as srv:
        assert getattr(srv.app.state.blocks._queue, "_quiet", False)
