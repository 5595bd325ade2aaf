"""Gradio's queue without its 1 ms busy poll (issue 16).

Gradio 6.31's ``Queue.start_processing`` checks for new events in a loop that sleeps 1 ms when there
is nothing to start (``sleep_when_free``), and ``start_progress_updates`` wakes every 10 ms: about
1,100 event-loop wake-ups a second, idle or not. On a CPU-only server that is time taken from the
engine's threads (llama.cpp's threads wait on each other at every op, so one preempted thread
stalls all of them). Profiled at 8 /v1 streams: most of the event loop's own CPU was these two polls.

Here the processing loop sleeps on an ``asyncio.Event`` instead, set when an event is pushed and
when a job ends (the two things that can let a queued event start), with a 0.5 s fallback for any
other path. Progress updates are checked every 50 ms while a job runs; with none running, that loop
sleeps too, until a job starts. An idle app (or one serving only /v1, which never enters this queue)
then wakes the event loop a few times a second instead of ~40 (measured: 10 ms of CPU a second before,
each wake-up a chance to preempt an engine thread mid-decode). Applied only to the Gradio version it was
written against (the loop below is that version's, with the wait replaced); on any other version
the queue is left as Gradio made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import types

PATCHED_VERSION = "6.31.0"
FALLBACK_S = 0.5  # longest wait when no wake-up came (a path that adds or frees work without push/job end)
PROGRESS_S = 0.05  # gr.Progress updates are sent at most this late, while a job runs


def quiet_queue(blocks) -> bool:
    """Make ``blocks``' queue (after ``blocks.queue(...)``) wait for work instead of polling it.
    Returns whether the patch was applied."""
    import gradio

    queue = getattr(blocks, "_queue", None)
    if gradio.__version__ != PATCHED_VERSION or queue is None or getattr(queue, "_quiet", False):
        return False
    wake: list[asyncio.Event] = []  # made on the event loop, by the processing loop itself
    job_started: list[asyncio.Event] = []  # made on the event loop, by the progress loop itself
    push, process_events = queue.push, queue.process_events

    def poke() -> None:
        if wake:
            wake[0].set()

    async def wait_for(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        event.clear()

    async def pushed(self, *args, **kwargs):
        try:
            return await push(*args, **kwargs)
        finally:
            poke()

    async def processed(self, *args, **kwargs):
        try:
            return await process_events(*args, **kwargs)
        finally:
            poke()

    async def start_processing(self) -> None:
        from gradio.utils import run_coro_in_background, set_task_name

        event = asyncio.Event()
        wake[:] = [event]  # a relaunch (the queue started again) gets a fresh one

        async def idle() -> None:
            await wait_for(event, FALLBACK_S)

        try:
            while not self.stopped:
                if len(self) == 0 or None not in self.active_jobs:
                    await idle()
                    continue
                async with self.delete_lock:
                    event_batch = self.get_events()
                if not event_batch:
                    await idle()
                    continue
                events, batch, concurrency_id = event_batch
                self.active_jobs[self.active_jobs.index(None)] = events
                event_queue = self.event_queue_per_concurrency_id[concurrency_id]
                event_queue.current_concurrency += 1
                start_time = time.time()
                fn = events[0].fn
                event_queue.start_times_per_fn[fn].add(start_time)
                for ev in events:
                    if (a := self.event_analytics.get(ev._id)) is not None:
                        a["status"] = "processing"
                task = run_coro_in_background(self.process_events, events, batch, start_time, fn)
                set_task_name(task, events[0].session_hash, fn._id, events[0]._id, batch)
                self._asyncio_tasks.add(task)
                task.add_done_callback(self._asyncio_tasks.discard)
                if job_started:
                    job_started[0].set()
                if self.live_updates:
                    self.broadcast_estimations(concurrency_id)
        finally:
            self.stopped = True
            self._cancel_asyncio_tasks()

    async def start_progress_updates(self) -> None:
        event = asyncio.Event()
        job_started[:] = [event]
        while not self.stopped:
            events = [evt for job in self.active_jobs if job is not None for evt in job]
            if not events:  # nothing can report progress until a job starts
                await wait_for(event, FALLBACK_S)
                continue
            for evt in events:
                if evt.progress_pending and evt.progress:
                    evt.progress_pending = False
                    self.send_message(evt, evt.progress)
            await asyncio.sleep(PROGRESS_S)

    queue.push = types.MethodType(pushed, queue)
    queue.process_events = types.MethodType(processed, queue)
    queue.start_processing = types.MethodType(start_processing, queue)
    queue.start_progress_updates = types.MethodType(start_progress_updates, queue)
    queue.progress_update_sleep_when_free = PROGRESS_S
    queue._quiet = True
    return True
