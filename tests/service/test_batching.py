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


def test_a_batch_not_worth_starting_waits_for_the_running_one_or_more_items():
    async def main():
        batches, running, peak = [], 0, 0

        def process(items):
            nonlocal running, peak
            batches.append(list(items))
            running += 1
            peak = max(peak, running)
            time.sleep(0.15)
            running -= 1
            return items

        b = MicroBatcher(
            "t", process, lambda batch, _: True, 100, workers=2, worth_starting=lambda p: len(p) >= 3
        )
        b.start()
        first = asyncio.ensure_future(b.submit([0]))  # nothing running: starts at once, alone
        await asyncio.sleep(0.05)
        small = asyncio.ensure_future(b.submit([1, 2]))  # two beside a running batch: not worth it
        await asyncio.sleep(0.05)
        waited = [list(x) for x in batches]
        # The running batch's end starts it: nothing is left waiting for an item that never comes.
        await asyncio.wait_for(asyncio.gather(first, small), 5)
        peak_before = peak
        lone = asyncio.ensure_future(b.submit([3]))
        await asyncio.sleep(0.05)
        big = await asyncio.wait_for(b.submit([4, 5, 6]), 5)  # three: worth a second worker at once
        await lone
        await b.stop()
        return waited, batches, peak_before, peak, big

    waited, batches, peak_before, peak, big = run(main())
    assert waited == [[0]]
    assert batches[:2] == [[0], [1, 2]] and peak_before == 1
    assert big == [4, 5, 6] and batches[2:] == [[3], [4, 5, 6]] and peak == 2
