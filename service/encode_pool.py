"""Encode worker processes: the server's model runs in N processes of T torch threads each.

Why processes: on CPU one forward's OpenMP threads meet at a barrier after every op, and a serving
batch (tens of ~25-token queries) is small enough that the barriers, and the event loop's Python taking
a core from one of the threads, cost a large share of it. Separate single-threaded processes run
batches side by side with no barrier and no shared GIL: on 2 cores, 2 processes x 1 thread encoded
SciFact queries at 234/s against 186-193/s for 1 process x 2 threads (batches of 16). Threads in one
process do not get this: the GIL serialises the Python between ops (measured slower through the server).
A lone request at low load takes every core instead (`alone`; the engine decides): a 215-token query
at concurrency 1 then costs what it costs in-process. Under load it would oversubscribe the cores (a
batch on both cores while the other worker starts one): block-model plain search, interleaved runs,
req/s at concurrency 1 / 8 / 32: 76 / 164 / 208 with lone requests on every core, 74 / 156 / 205 with
every batch with no other running on every core, 59 / 165 / 212 with none.

Each worker loads the model itself (nothing is shared but the pipe) and keeps its own block-attention
example cache. Free workers are taken last-in first-out: at low load one worker, its threads and caches
warm, takes every batch (alternating between two cost a single query 17-18 ms instead of ~12). A worker
found dead when its turn comes is started again first; one that dies during a batch fails that batch
with `EncodeWorkerError` (503) and is started again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import os
import queue
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("rare.service")

CACHE_STATS = ("hits", "misses", "bytes", "entries")


class EncodeWorkerError(RuntimeError):
    """An encode worker failed to start, or exited while holding a batch."""


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's
    `--cpus`), which affinity does not show."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def plan_workers(device: str, requested: int | None) -> tuple[int, int]:
    """(encode processes, torch threads each): `requested`, else 1 on a GPU (in-process) and one per
    CPU core up to 4 on CPU; the cores are shared out among them."""
    cpus = usable_cpus()
    workers = requested or (min(cpus, 4) if device.startswith("cpu") else 1)
    return workers, max(1, cpus // workers)


@dataclass(frozen=True)
class WorkerSpec:
    model: str  # a resolved path: workers never search for a model
    device: str
    dtype: str
    threads: int  # torch threads while other workers are busy too: the cores shared out
    all_threads: int  # torch threads for a batch running alone: every core
    example_cache_bytes: int  # for a block-attention model's example cache
    gc_freeze: bool = True  # service.heap, once the model is loaded


def _serve(conn, spec: WorkerSpec) -> None:
    """A worker's main: load the model, then encode each batch sent until told to stop."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from rare.encoding import encode_batch
    from rare.model import load_model
    from service.heap import freeze_startup_heap

    torch.set_num_threads(spec.threads)
    try:
        model = load_model(spec.model, spec.device, spec.dtype)
        # Whatever the server's attention setting: a bound only, the cache fills on use.
        block = model.packable or model.rare.attention == "block"
        if block:
            model.block_encoder.cache_bytes = spec.example_cache_bytes
    except Exception as exc:  # reported to the parent, which refuses to start
        conn.send(("error", f"{type(exc).__name__}: {exc}", None))
        return
    if spec.gc_freeze:
        freeze_startup_heap()
    conn.send(("ready", None, None))

    def stats() -> dict | None:
        return model.block_encoder.stats() if block else None

    threads = spec.threads
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            msg = None
        if msg is None:
            # Nothing to flush or save here; skipping interpreter teardown saves ~2 s per stop.
            os._exit(0)
        alone, batch = msg
        want = spec.all_threads if alone else spec.threads
        if want != threads:
            torch.set_num_threads(want)
            threads = want
        try:
            conn.send(("ok", encode_batch(model, *batch), stats()))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}", stats()))


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: object
    stats: dict = field(default_factory=dict)


def _exchange(w: _Worker, alone: bool, texts, lengths, pool_from, blocks) -> np.ndarray:
    """One batch on worker `w` (`encode_batch`'s arguments, as plain lists for the pipe): its
    embeddings; the worker's cache counters are kept. A broken pipe raises EOFError or OSError."""
    w.conn.send((alone, (list(texts), list(lengths), list(pool_from), [tuple(b) for b in blocks])))
    status, value, stats = w.conn.recv()
    if stats is not None:
        w.stats = stats
    if status != "ok":
        raise EncodeWorkerError(f"encode worker failed: {value}")
    return value


class EncodePool:
    """`encode(texts, lengths, pool_from, blocks)` on whichever worker is free (thread-safe: call it
    from up to `size` threads at once)."""

    def __init__(self, spec: WorkerSpec, size: int):
        self.spec = spec
        self.size = size
        self._ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and locks
        # LIFO: at low load the same worker, its threads and caches still warm, takes every batch.
        self._free: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0

    def start(self) -> None:
        """Start every worker; they load the model in parallel with the caller until `wait_ready`."""
        self._workers = [self._spawn() for _ in range(self.size)]

    def wait_ready(self) -> None:
        try:
            for w in self._workers:
                self._await_ready(w)
        except EncodeWorkerError:
            self.close()
            raise
        for w in self._workers:
            self._free.put(w)

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, self.spec), name="rare-encode", daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def _await_ready(self, w: _Worker) -> None:
        try:
            status, detail, _ = w.conn.recv()
        except EOFError:
            w.process.join(5)
            status, detail = "error", f"exited with code {w.process.exitcode}"
        if status != "ready":
            raise EncodeWorkerError(f"encode worker failed to start: {detail}")

    def encode(
        self,
        texts: Sequence[str],
        lengths: Sequence[int],
        pool_from: Sequence[int],
        blocks: Sequence[Sequence[int]],
        alone: bool = False,
    ) -> np.ndarray:
        """`alone`: no other batch is running, so this one may use every core."""
        if self._closed:
            raise EncodeWorkerError("the encode workers are shut down")
        w = self._free.get()
        try:
            if not w.process.is_alive():  # died while idle: replaced before it is given work
                w = self._replace(w)
            return _exchange(w, alone, texts, lengths, pool_from, blocks)
        except (EOFError, OSError) as exc:
            if self._closed:
                raise EncodeWorkerError("the encode workers are shut down") from exc
            w.process.join(5)
            code = w.process.exitcode
            w = self._replace(w)
            raise EncodeWorkerError(
                f"an encode worker exited (code {code}) during this batch and was restarted; retry"
            ) from exc
        finally:
            self._free.put(w)

    def encode_on_each(self, batches: Sequence[tuple]) -> None:
        """Run every batch (`encode`'s arguments) on every worker, the workers side by side, for what it
        leaves in their caches. Only while nothing else uses the pool: the server calls it before it
        serves."""

        def run(w: _Worker) -> None:
            for batch in batches:
                _exchange(w, False, *batch)

        with ThreadPoolExecutor(len(self._workers)) as ex:
            list(ex.map(run, self._workers))

    def _replace(self, dead: _Worker) -> _Worker:
        log.error(
            "encode worker %s exited (code %s); starting another", dead.process.pid, dead.process.exitcode
        )
        with self._lock:
            w = self._spawn()
            self._await_ready(w)
            self._workers[self._workers.index(dead)] = w
            self.restarts += 1
        return w

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def cache_stats(self) -> dict:
        """Example-cache counters summed over the workers (as of each one's last batch)."""
        return {k: sum(w.stats.get(k, 0) for w in self._workers) for k in CACHE_STATS}

    def close(self) -> None:
        self._closed = True
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in self._workers:
            w.process.join(10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
        self._workers.clear()
