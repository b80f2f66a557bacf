"""The micro-batcher: one worker thread, token-bounded batches, backpressure, refusing past the queue size."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.batching import MicroBatcher, QueueFullError


def run(coro):
    return asyncio.run(coro)


def recorder():
    batches: list[list[int]] = []

    def process(items):
        batches.append(list(items))
        time.sleep(0.02)  # a model call
        return [x * 10 for x in items]

    return batches, process


def test_concurrent_submissions_share_a_batch_within_the_budget():
    async def main():
        batches, process = recorder()
        b = MicroBatcher("t", process, lambda batch, _: len(batch) < 3, max_queue=100)
        b.start()
        out = await asyncio.gather(*(b.submit([i]) for i in range(7)))
        await b.stop()
        return batches, out

    batches, out = run(main())
    assert out == [[i * 10] for i in range(7)]
    assert all(len(x) <= 3 for x in batches) and sum(map(len, batches)) == 7 and len(batches) < 7


def test_a_full_queue_refuses_instead_of_hanging():
    async def main():
        _, process = recorder()
        b = MicroBatcher("t", process, lambda batch, _: True, max_queue=2)
        b.start()
        with pytest.raises(QueueFullError):
            await b.submit([1, 2, 3])
        await b.stop()

    run(main())
