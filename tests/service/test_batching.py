"""The micro-batcher: one worker thread, token-bounded batches, backpressure, waiting for stragglers."""

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


def test_a_batch_waits_for_requests_in_progress_but_a_lone_one_does_not():
    async def main(expected: int, late_after: float | None):
        batches, process = recorder()
        b = MicroBatcher(
            "t", process, lambda batch, _: True, max_queue=100, max_wait_s=0.2, expected=lambda: expected
        )
        b.start()

        async def late():
            await asyncio.sleep(late_after)
            return await b.submit([2, 3])

        t = time.perf_counter()
        jobs = [b.submit([1])] + ([late()] if late_after is not None else [])
        await asyncio.gather(*jobs)
        took = time.perf_counter() - t
        await b.stop()
        return batches, took

    batches, _ = run(main(3, 0.03))  # two more are on their way: one call for all three
    assert batches == [[1, 2, 3]]
    batches, took = run(main(1, None))  # nothing else in progress: no wait
    assert batches == [[1]] and took < 0.15
    batches, took = run(main(5, None))  # the ones expected never come: at most max_wait
    assert batches == [[1]] and 0.19 < took < 1.0
