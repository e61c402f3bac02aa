"""Adaptive micro-batching: a lone request goes at once; requests arriving while the model is
busy are scored together in the next call; results go back to the right caller; an error
reaches every caller of that batch."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batching import MicroBatcher


def test_batches_form_under_load_and_results_route_back():
    calls: list[int] = []
    gate = threading.Event()

    def model(X: np.ndarray) -> np.ndarray:
        calls.append(len(X))
        if len(calls) == 1:
            gate.wait(5)  # the first call is slow: the others queue meanwhile
        return X[:, 0] * 2

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(model, max_rows=100, executor=ThreadPoolExecutor(1))
        first = asyncio.create_task(batcher.submit(np.array([[1.0]])))
        await asyncio.sleep(0.05)
        rest = [
            asyncio.create_task(batcher.submit(np.array([[float(i)], [float(i) + 0.5]])))
            for i in range(2, 12)
        ]
        await asyncio.sleep(0.05)
        gate.set()
        out = [await first, *[await r for r in rest]]
        assert batcher.batches == 2 and batcher.largest == 10 and batcher.rows == 21
        return out

    out = asyncio.run(main())
    assert calls == [1, 20]  # one lone call, then all ten queued requests in one
    assert out[0].tolist() == [2.0]
    for i, r in zip(range(2, 12), out[1:], strict=True):
        assert r.tolist() == [2.0 * i, 2.0 * i + 1.0]


def test_max_rows_splits_batches_and_errors_reach_every_caller():
    calls: list[int] = []

    def model(X: np.ndarray) -> np.ndarray:
        calls.append(len(X))
        time.sleep(0.02)
        if (X < 0).any():
            raise ValueError("negative input")
        return X[:, 0]

    async def main() -> None:
        batcher = MicroBatcher(model, max_rows=4, executor=ThreadPoolExecutor(1))
        jobs = [asyncio.create_task(batcher.submit(np.ones((2, 1)))) for _ in range(5)]
        await asyncio.gather(*jobs)
        assert max(calls) <= 4
        bad = [asyncio.create_task(batcher.submit(np.full((1, 1), -1.0))) for _ in range(3)]
        for b in bad:
            with pytest.raises(ValueError, match="negative"):
                await b
        assert (await batcher.submit(np.ones((1, 1)))).tolist() == [1.0]  # still serving

    asyncio.run(main())
