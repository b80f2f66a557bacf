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


def test_workers_run_batches_side_by_side():
    async def main():
        running, peak = 0, 0

        def process(items):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            time.sleep(0.1)
            running -= 1
            return items

        b = MicroBatcher("t", process, lambda batch, _: len(batch) < 2, max_queue=100, workers=2)
        b.start()
        t = time.perf_counter()
        out = await asyncio.gather(*(b.submit([i]) for i in range(4)))
        wall = time.perf_counter() - t
        await b.stop()
        return out, peak, wall

    out, peak, wall = run(main())
    assert out == [[i] for i in range(4)] and peak == 2
    assert wall < 0.35  # four items in batches of two, two at a time: about 0.2 s, not 0.4
