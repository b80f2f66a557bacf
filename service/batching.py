"""Dynamic batching: concurrent requests are grouped into one model or FAISS call, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """Backpressure: the queue is past its configured size; the caller should retry later (429)."""


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future


class MicroBatcher:
    """Runs `process(payloads) -> results` on `workers` threads, batching whatever is queued.

    `fits(batch, payload)` says whether `payload` may join `batch` (a token budget, a count, ...). A batch
    is formed only when a worker is free, so what queues meanwhile rides together. With
    `worth_starting(batch)`, a batch beside a running one starts only once that holds: a call's fixed
    cost makes a tiny batch on a second worker dearer than waiting for more items or a free worker.
    """

    def __init__(
        self,
        name: str,
        process: Callable[[list[Any]], Sequence[Any]],
        fits: Callable[[list[Any], Any], bool],
        max_queue: int,
        on_batch: Callable[[list[Any]], None] | None = None,
        workers: int = 1,
        worth_starting: Callable[[list[Any]], bool] | None = None,
    ):
        self.name = name
        self._process = process
        self._fits = fits
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.workers = workers
        self._worth_starting = worth_starting
        self._busy = 0
        self._running: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"batch-{name}")

    @property
    def in_flight(self) -> int:
        """Batches being processed now."""
        return self._busy

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        _fail(self._queue, RuntimeError("server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, payloads: Sequence[Any]) -> list[Any]:
        if self._task is None or self._task.done():
            raise RuntimeError(f"{self.name} batcher is not running")
        if self.pending + len(payloads) > self.max_queue:
            raise QueueFullError(f"{self.name} queue is full ({self.pending} waiting); retry later")
        loop = asyncio.get_running_loop()
        items = [_Item(p, loop.create_future()) for p in payloads]
        self._queue.extend(items)
        self._wakeup.set()
        return list(await asyncio.gather(*(i.future for i in items)))

    async def _run(self) -> None:
        free = asyncio.Semaphore(self.workers)
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await free.acquire()
                batch = self._take()
                if batch is None:
                    free.release()
                    break
                task = asyncio.get_running_loop().create_task(self._dispatch(batch, free))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    def _take(self) -> list[_Item] | None:
        """The next batch, off the queue; None when nothing is queued, or when another batch is running
        and this one is not worth starting beside it yet (it waits for more items or a free worker)."""
        while self._queue and self._queue[0].future.done():  # callers that went away
            self._queue.popleft()
        batch: list[_Item] = []
        payloads: list[Any] = []
        for item in self._queue:
            if item.future.done():
                continue
            if payloads and not self._fits(payloads, item.payload):
                break
            batch.append(item)
            payloads.append(item.payload)
        if not batch or (self._busy and self._worth_starting and not self._worth_starting(payloads)):
            return None
        while self._queue.popleft() is not batch[-1]:  # the batch, and the gone callers among it
            pass
        self._busy += 1
        return batch

    async def _dispatch(self, batch: list[_Item], free: asyncio.Semaphore) -> None:
        payloads = [i.payload for i in batch]
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._process, payloads
            )
        except asyncio.CancelledError:  # stop(): the callers must not wait forever
            _fail(batch, RuntimeError("server is shutting down"))
            raise
        except Exception as exc:  # one bad batch must not kill the batcher
            log.exception("%s batch of %d failed", self.name, len(batch))
            _fail(batch, exc)
            return
        finally:
            self._busy -= 1
            free.release()
            self._wakeup.set()
        if self._on_batch:
            self._on_batch(payloads)
        for i, r in zip(batch, results, strict=True):
            if not i.future.done():
                i.future.set_result(r)


def _fail(items, error: Exception) -> None:
    for i in items:
        if not i.future.done():
            i.future.set_exception(error)
