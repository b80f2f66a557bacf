"""Encode worker processes: the same embeddings as in-process, summed cache counters, a dead worker
replaced, a worker that cannot load refused at start."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rare.encoding import encode_batch
from rare.query import QueryAugmenter
from service.encode_pool import EncodePool, EncodeWorkerError, WorkerSpec, plan_workers, usable_cpus
from tests.rare.test_block_attention import augmented, whole_string

TEXTS = ["insulin resistance in mice", "Vitamin D and bone fractures in older adults", "lava"]


def expected_texts(model):
    return encode_batch(model, TEXTS, [8, 12, 3], [0, 0, 0], [(), (), ()])


@pytest.fixture
def pool_of():
    pools: list[EncodePool] = []

    def make(model_path: str, size: int = 2) -> EncodePool:
        pool = EncodePool(WorkerSpec(model_path, "cpu", "float32", 1, 2, 64 << 20), size)
        pools.append(pool)
        pool.start()
        pool.wait_ready()
        return pool

    yield make
    for p in pools:
        p.close()


def test_workers_encode_what_the_process_encodes(pool_of, model):
    pool = pool_of(model.path)
    aug = QueryAugmenter(model, pooling="query").build("insulin resistance", [], "Find abstracts")
    texts = [*TEXTS, aug.text]
    lengths = [8, 12, 3, aug.tokens]
    pool_from, blocks = [0, 0, 0, aug.pool_from], [(), (), (), ()]
    expected = encode_batch(model, texts, lengths, pool_from, blocks)
    # Two callers at once, as the server's batcher threads do: each gets its own answer.
    with ThreadPoolExecutor(2) as ex:
        outs = list(
            ex.map(
                lambda i: pool.encode(texts[i:], lengths[i:], pool_from[i:], blocks[i:], i == 0), [0, 1] * 3
            )
        )
    for i, out in zip([0, 1] * 3, outs, strict=True):
        np.testing.assert_allclose(out, expected[i:], atol=1e-5)
    assert len(set(pool.pids())) == 2 and os.getpid() not in pool.pids()


def test_block_attention_worker_caches_and_warm_worker_first(pool_of, model, block_model_dir):
    pool = pool_of(str(block_model_dir))
    a = augmented(model)[0]  # an instruction prefix and three examples
    for _ in range(4):  # one call at a time: the last worker used (warm) takes each
        got = pool.encode([a.text], [a.tokens], [a.pool_from], [a.blocks])
    np.testing.assert_allclose(got, whole_string(model, [a.text], [a.pool_from], [a.blocks]), atol=1e-5)
    stats = pool.cache_stats()  # summed over both workers; the idle one holds nothing
    assert stats["misses"] == 4 and stats["hits"] == 3 * 4 and stats["entries"] == 4, stats


def test_encode_on_each_fills_every_workers_cache(pool_of, model, block_model_dir):
    pool = pool_of(str(block_model_dir))
    a = augmented(model)[0]  # an instruction prefix and three examples
    pool.encode_on_each([([a.text], [a.tokens], [a.pool_from], [a.blocks])])
    assert pool.cache_stats()["entries"] == 4 * pool.size, pool.cache_stats()
    for _ in range(3):  # and a search computes nothing more
        pool.encode([a.text], [a.tokens], [a.pool_from], [a.blocks])
    assert pool.cache_stats()["misses"] == 4 * pool.size, pool.cache_stats()


def wait_exited(pid: int, timeout: float = 10.0) -> None:
    """Until `pid` is a zombie (exited, not yet reaped by its parent) or gone. A killed process's
    main thread can show as a zombie while its other threads (torch's) are still exiting, and its parent
    cannot reap it, nor see it dead, until they are gone: so wait for those too."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            threads = len(os.listdir(f"/proc/{pid}/task"))
        except FileNotFoundError:
            return
        if state in ("Z", "X") and threads <= 1:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still running {timeout} s after SIGKILL")


def test_a_worker_dead_while_idle_is_replaced_before_its_turn(pool_of, model):
    pool = pool_of(model.path)
    victims = pool.pids()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    for pid in victims:  # dead, not merely signalled: a loaded machine may take a while to get there
        wait_exited(pid)
    for _ in range(3):
        np.testing.assert_allclose(
            pool.encode(TEXTS, [8, 12, 3], [0, 0, 0], [(), (), ()]), expected_texts(model), atol=1e-5
        )
    assert pool.restarts == 1 and len(set(pool.pids()) - set(victims)) == 1  # the other waits its turn


def test_a_worker_dying_mid_batch_fails_that_batch_only(pool_of, model):
    pool = pool_of(model.path)
    victims = pool.pids()
    long = ["insulin resistance and glucose uptake in skeletal muscle " * 20] * 256
    with ThreadPoolExecutor(1) as ex:
        busy = ex.submit(pool.encode, long, [256] * 256, [0] * 256, [()] * 256)
        time.sleep(1.0)  # the batch takes several seconds on one thread
        assert not busy.done()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(EncodeWorkerError, match="during this batch and was restarted"):
            busy.result(timeout=120)
    np.testing.assert_allclose(
        pool.encode(TEXTS, [8, 12, 3], [0, 0, 0], [(), (), ()]), expected_texts(model), atol=1e-5
    )
    assert pool.restarts >= 1


def test_a_worker_that_cannot_load_refuses_the_start(tmp_path):
    bad = tmp_path / "no-model"
    bad.mkdir()
    pool = EncodePool(WorkerSpec(str(bad), "cpu", "float32", 1, 2, 0), 2)
    pool.start()
    with pytest.raises(EncodeWorkerError, match="failed to start"):
        pool.wait_ready()
    assert pool.pids() == []


def test_worker_plan():
    cpus = usable_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))
    assert plan_workers("cuda", None) == (1, cpus)
    assert plan_workers("cpu", None) == (min(cpus, 4), max(1, cpus // min(cpus, 4)))
    assert plan_workers("cpu", 3) == (3, max(1, cpus // 3))
