"""Adaptive micro-batching for the row endpoint.

Requests for the same model version queue up while that version is busy computing a batch;
the next batch takes everything queued (up to `max_rows`). An idle model answers a lone
request at once (no fixed wait), and under load batches grow by themselves with the arrival
rate — the batch size adapts to load, which is what makes the per-row cost fall when many
clients call at once. Model calls run on one worker thread per batcher so the event loop
keeps parsing requests meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class MicroBatcher:
    """Batches calls of ``fn(matrix) -> vector`` (one output per row) across requests."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        max_rows: int,
        executor: ThreadPoolExecutor,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.fn = fn
        self.on_batch = on_batch  # (requests, rows) of each model call, e.g. for metrics
        self.max_rows = max_rows
        self.executor = executor
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._running = False
        self.batches = 0
        self.rows = 0
        self.largest = 0

    async def submit(self, X: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.append((X, future))
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                jobs = [self._queue.popleft()]
                rows = len(jobs[0][0])
                while self._queue and rows + len(self._queue[0][0]) <= self.max_rows:
                    job = self._queue.popleft()
                    jobs.append(job)
                    rows += len(job[0])
                X = jobs[0][0] if len(jobs) == 1 else np.concatenate([j[0] for j in jobs])
                try:
                    P = await loop.run_in_executor(self.executor, self.fn, X)
                except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                    for _, fut in jobs:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.batches += 1
                self.rows += rows
                self.largest = max(self.largest, len(jobs))
                if self.on_batch is not None:
                    self.on_batch(len(jobs), rows)
                start = 0
                for x, fut in jobs:
                    if not fut.done():
                        fut.set_result(P[start : start + len(x)])
                    start += len(x)
        finally:
            self._running = False
