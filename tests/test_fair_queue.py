"""Model slots are granted in arrival order: with N clients on S slots nobody waits longer than
ceil(N/S) generations (+10 %), and the waiting count is what /metrics reports. Scripted backend."""

from __future__ import annotations

import math
import threading
import time

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams
from backends.slots import FairSlots
from tests.conftest import make_manager
from tests.fakes import FakeScript, fake_registry


def test_waiters_are_served_in_arrival_order():
    slots = FairSlots(1)
    assert slots.acquire()
    order, threads = [], []
    for i in range(8):
        t = threading.Thread(target=lambda i=i: (slots.acquire(), order.append(i), slots.release()))
        t.start()
        threads.append(t)
        while slots.waiting < i + 1:  # arrival order is fixed before the next one comes
            time.sleep(0.001)
    slots.release()
    for t in threads:
        t.join(5)
    assert order == list(range(8))


def test_a_cancelled_waiter_leaves_the_queue():
    slots = FairSlots(1)
    assert slots.acquire()
    cancel = threading.Event()
    result = []
    t = threading.Thread(target=lambda: result.append(slots.acquire(cancel)))
    t.start()
    while slots.waiting == 0:
        time.sleep(0.001)
    cancel.set()
    t.join(2)
    assert result == [False] and slots.waiting == 0


def test_twenty_clients_on_four_slots_wait_at_most_their_turn():
    n, s, tokens, delay = 20, 4, 10, 0.02
    script = FakeScript(token_delay=delay, slots=s)
    script.enqueue(*[["x"] * tokens for _ in range(n)])
    manager = make_manager(registry=fake_registry(script))
    manager.load(ModelSpec(source="fake", backend="fake"))
    request = ChatRequest((Message("user", "hi"),), SamplingParams(max_new_tokens=tokens, temperature=0.0))
    waits, peak_waiting = [], [0]

    def client():
        gen = manager.stream(request, threading.Event())
        for _ in gen:
            pass
        waits.append(gen.stats.queue_wait_s)

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak_waiting[0] = max(peak_waiting[0], manager.metrics.waiting)
        time.sleep(0.005)
    longest = tokens * delay
    assert len(waits) == n
    assert max(waits) <= math.ceil(n / s) * longest * 1.1 + 0.05
    assert peak_waiting[0] >= n - s - 2  # the queue is visible while it lasts
    assert manager.metrics.waiting == 0 and manager.metrics.running == 0


def test_an_exclusive_holder_waits_for_the_shared_ones_and_goes_before_later_ones():
    from backends.slots import SharedExclusive

    gate, events = SharedExclusive(), []
    gate.acquire_shared()
    exclusive = threading.Thread(target=lambda: (gate.acquire_exclusive(), events.append("exclusive"),
                                                 time.sleep(0.05), gate.release_exclusive()))
    exclusive.start()
    while not gate._exclusive_waiting:
        time.sleep(0.001)
    late = threading.Thread(target=lambda: (gate.acquire_shared(), events.append("late shared"), gate.release_shared()))
    late.start()
    time.sleep(0.05)
    assert events == []  # the exclusive one waits for the first shared holder; the late one waits behind it
    gate.release_shared()
    exclusive.join(2)
    late.join(2)
    assert events == ["exclusive", "late shared"]
