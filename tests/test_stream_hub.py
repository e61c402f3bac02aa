"""The stream hub's wake-ups: an event that arrives while a stream is busy reading the store
(not waiting) must still wake its next wait — a lost wake-up left those results waiting for
the next event or the fallback re-read (2.2 s seen in benchmarks/live_latency.py)."""

from __future__ import annotations

import asyncio
import threading
import time

from serving.stream import StreamHub


def _run(coro_fn):  # off the main thread: attaching there installs the replica's signal handlers
    out = []
    t = threading.Thread(target=lambda: out.append(asyncio.run(coro_fn())))
    t.start()
    t.join(timeout=30)
    return out[0]


def test_an_event_during_a_read_wakes_the_next_wait_at_once():
    async def scenario() -> tuple[float, float]:
        hub = StreamHub()
        hub.attach(asyncio.get_running_loop())
        seen = hub.generation  # the stream is about to read the store...
        t = threading.Thread(target=hub.notify)  # ...and the bus's thread notifies meanwhile
        t.start()
        t.join()
        t0 = time.perf_counter()
        await hub.wait(5.0, seen)
        missed = time.perf_counter() - t0
        seen = hub.generation  # nothing new since: the wait lasts until an event or the timeout
        t0 = time.perf_counter()
        await hub.wait(0.3, seen)
        quiet = time.perf_counter() - t0
        return missed, quiet

    missed, quiet = _run(scenario)
    assert missed < 0.1, missed
    assert quiet >= 0.25, quiet


def test_a_waiting_stream_is_woken_by_an_event_from_another_thread():
    async def scenario() -> float:
        hub = StreamHub()
        hub.attach(asyncio.get_running_loop())
        seen = hub.generation
        threading.Timer(0.2, hub.notify).start()
        t0 = time.perf_counter()
        await hub.wait(5.0, seen)
        return time.perf_counter() - t0

    waited = _run(scenario)
    assert 0.15 < waited < 1.0, waited
