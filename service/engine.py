"""The serving engine: model, collections, batchers. No HTTP here; the app maps its errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rare.collection import Collection, CollectionError, list_collections, validate_name
from rare.encoding import encode_batch, token_lengths
from rare.model import LoadedModel, load_model, resolve_device, resolve_model_path
from rare.pool import example_id
from rare.prompt import FORMAT_DESCRIPTION, AugmentedQuery, Example, ScoredExample, encode_columns
from rare.query import QueryAugmenter, default_k
from rare.settings import Settings
from service.batching import MicroBatcher
from service.encode_pool import EncodePool, WorkerSpec, plan_workers, usable_cpus
from service.metrics import Metrics

log = logging.getLogger("rare.service")

SEARCH_BATCH = 256
SELECT_BATCH = 256  # queries per example-selection call (BM25 over the pool's queries)
WARM_BATCH = 64  # pool examples per batch when warming the example caches
WARM_QUERY = "warm"  # the target query of a warm-up string: its own tokens are not cached
# A batch beside a running one starts once it holds this many tokens, else waits for more texts or the
# running batch's end. A forward call on one CPU thread has a fixed cost of about 25 tokens' work
# (all-MiniLM-L6-v2 packed: 2.1 ms + 0.08 ms a token in bfloat16, 5.5 + 0.22 in float32), so a lone
# short query beside a running batch cost a worker twice its share: at concurrency 32 a fifth of the
# encode batches were single queries. Twice the fixed cost: plain SciFact search, 2 workers, bfloat16,
# req/s 574 against 562 at concurrency 32 and 361 against 357 at 8 (3 interleaved runs each), with
# 20-25% less server CPU a request at 8; at 64-96 tokens concurrency 32 gained more and 8 lost.
BESIDE_RUNNING_TOKENS = 48


class NotFoundError(LookupError):
    pass


class UnavailableError(RuntimeError):
    pass


class BadRequestError(ValueError):
    pass


@dataclass
class QueryResult:
    collection: Collection
    hits: list[tuple[str, float]]
    augmented: AugmentedQuery


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.model: LoadedModel | None = None
        self.augmenter: QueryAugmenter | None = None
        self.collections: dict[str, Collection] = {}
        self.unavailable: dict[str, str] = {}
        self._create_lock = asyncio.Lock()
        self.encoder: MicroBatcher | None = None
        self.searcher: MicroBatcher | None = None
        self.selector: MicroBatcher | None = None
        self.pool: EncodePool | None = None

    # ---------- lifecycle ----------
    def load(self) -> None:
        s = self.settings
        device = resolve_device(s.device)
        workers, threads = plan_workers(device, s.encode_workers)
        if workers > 1:  # started first: they load the model while this process does
            spec = WorkerSpec(
                resolve_model_path(s.model),
                device,
                s.dtype,
                threads,
                usable_cpus(),
                s.example_cache_mb << 20,
                s.gc_freeze,
            )
            self.pool = EncodePool(spec, workers)
            self.pool.start()
        try:
            self.model = load_model(s.model, s.device, s.dtype)
            self.augmenter = QueryAugmenter(
                self.model,
                example_doc_tokens=s.example_doc_tokens,
                max_query_tokens=s.max_query_tokens,
                pooling=s.pooling,
                attention=s.attention,
            )
        except Exception:
            if self.pool is not None:
                self.pool.close()
            raise
        if self.augmenter.attention == "block":
            if self.pool is None:
                self.model.block_encoder.cache_bytes = s.example_cache_mb << 20
            self.metrics.watch_example_cache(
                self.pool.cache_stats if self.pool else self.model.block_encoder.stats
            )
        for name in list_collections(s.data_dir):
            self._open(name)
        if self.pool is not None:
            self.pool.wait_ready()
            log.info("%d encode workers, %d torch threads each", workers, threads)
        # Not for a server that searches plain by default (a base model): its caches fill on use.
        if self.augmenter.attention == "block" and s.warm_example_cache and self.resolve_k(None) > 0:
            self._warm_example_caches()

    def _warm_example_caches(self) -> None:
        """Every collection's pool examples into each encode worker's example cache, as many as it holds.

        Each worker has its own cache, and an example's first use runs its whole block (~15 ms a
        SciFact example on one CPU thread): after a restart 5-example search ran at ~40 req/s until the
        caches filled, ~160 after, and at low load one worker takes every batch, so the other's stays
        cold until load rises. Not fatal: a failure leaves the caches to fill on use.
        """
        room = int(0.9 * (self.settings.example_cache_mb << 20)) // self.model.block_encoder.token_bytes()
        items: list[AugmentedQuery] = []
        for col in self.collections.values():
            if room < 0:  # full: the remaining collections' examples fill on use
                break
            bare = self.augmenter.build(WARM_QUERY, [], col.manifest.instruction).tokens
            for ex in list(col.examples.values()):
                a = self.augmenter.build(WARM_QUERY, [ScoredExample(ex, 0.0)], col.manifest.instruction)
                room -= a.tokens - bare  # the example's tokens (and the prefix's, for an untrained model)
                if room < 0:
                    break
                if a.examples:  # else the example alone is over the query budget: never used
                    items.append(a)
        if not items:
            return
        t = time.perf_counter()
        batches = [encode_columns(items[i : i + WARM_BATCH]) for i in range(0, len(items), WARM_BATCH)]
        try:
            if self.pool is not None:
                self.pool.encode_on_each(batches)
            else:
                for b in batches:
                    encode_batch(self.model, *b)
        except Exception as exc:
            log.warning("example cache warm-up failed (%s); the caches fill as examples are used", exc)
            return
        log.info("%d pool examples put in the example caches in %.1f s", len(items), time.perf_counter() - t)

    def _open(self, name: str) -> None:
        try:
            self.collections[name] = Collection.open(self.settings.data_dir, name, self.model)
            self.unavailable.pop(name, None)
            log.info(
                "collection '%s' loaded: %d documents, %d examples",
                name,
                len(self.collections[name].docs),
                len(self.collections[name].examples),
            )
        except CollectionError as exc:
            # Refuse this one collection, keep serving the rest; /ready reports it.
            self.unavailable[name] = str(exc)
            log.error("collection '%s' refused: %s", name, exc)

    async def start(self) -> None:
        s, m = self.settings, self.metrics

        def fits_tokens(batch: list, item) -> bool:
            longest = max(max(x[1] for x in batch), item[1])
            return (len(batch) + 1) * longest <= s.batch_tokens

        def on_encode(batch: list) -> None:
            m.batch_size.labels("encode").observe(len(batch))
            m.tokens.labels("encoded").inc(sum(x[1] for x in batch))

        self.encoder = MicroBatcher(
            "encode",
            self._encode_batch,
            fits_tokens,
            s.max_queue,
            on_encode,
            workers=self.pool.size if self.pool else 1,
            worth_starting=lambda b: sum(x[1] for x in b) >= BESIDE_RUNNING_TOKENS,
        )

        def counted(name: str, process, size: int) -> MicroBatcher:
            """Up to `size` items a batch, whatever they cost; batch sizes go to the metrics."""
            return MicroBatcher(
                name,
                process,
                lambda b, _: len(b) < size,
                s.max_queue,
                lambda b: m.batch_size.labels(name).observe(len(b)),
            )

        self.searcher = counted("search", self._search_batch, SEARCH_BATCH)
        # Example selection batched too: BM25 over the pool costs ~0.5 ms a query one at a time and
        # ~0.1 ms in a batch, on the event loop's process, which every request shares.
        self.selector = counted("examples", self._select_batch, SELECT_BATCH)
        self.encoder.start()
        self.searcher.start()
        self.selector.start()

    async def stop(self) -> None:
        for b in (self.encoder, self.searcher, self.selector):
            if b is not None:
                await b.stop()
        if self.pool is not None:
            self.pool.close()
        for col in self.collections.values():
            col.close()

    # ---------- batch workers (run on their own threads) ----------
    def _encode_batch(self, items: list[tuple[str, int, int, tuple[int, ...]]]) -> list[np.ndarray]:
        texts, lengths, pool_from, blocks = zip(*items, strict=True)
        if self.pool is not None:
            # A lone request at low load runs on every core; any sign of load (a batch of several, a
            # queue, another batch running) keeps each worker to its share, since a batch on every
            # core while another starts beside it oversubscribes the cores.
            alone = len(items) == 1 and self.encoder.in_flight <= 1 and not self.encoder.pending
            return list(self.pool.encode(texts, lengths, pool_from, blocks, alone))
        return list(encode_batch(self.model, texts, lengths, pool_from, blocks))

    def _search_batch(self, items: list[tuple[Collection, np.ndarray, int]]) -> list[list[tuple[str, float]]]:
        return _per_collection(items, lambda col, vecs, k: col.search(np.stack(vecs), k))

    def _select_batch(self, items: list[tuple[Collection, str, int]]) -> list[list[ScoredExample]]:
        return _per_collection(items, lambda col, queries, k: col.select_examples(queries, k))

    # ---------- collections ----------
    def collection(self, name: str) -> Collection:
        validate_name(name)
        col = self.collections.get(name)
        if col is not None:
            return col
        if name in self.unavailable:
            raise UnavailableError(f"collection '{name}' is unavailable: {self.unavailable[name]}")
        raise NotFoundError(
            f"collection '{name}' not found; create it with `rare index --collection {name}` "
            f"or POST /collections/{name}/documents"
        )

    async def writable_collection(self, name: str) -> Collection:
        """Writes create a missing collection, with this server's model."""
        validate_name(name)
        if name in self.collections:
            return self.collections[name]
        async with self._create_lock:
            if name not in self.collections:
                if name in self.unavailable:
                    raise UnavailableError(f"collection '{name}' is unavailable: {self.unavailable[name]}")
                self.collections[name] = await asyncio.to_thread(
                    Collection.create,
                    self.settings.data_dir,
                    name,
                    self.model,
                    selector=self.settings.selector,
                )
        return self.collections[name]

    # ---------- encoding ----------
    async def encode(
        self,
        texts: list[str],
        lengths: list[int],
        kind: str,
        pool_from: list[int] | None = None,
        blocks: list[tuple[int, ...]] | None = None,
    ) -> np.ndarray:
        self.metrics.tokens.labels(kind).inc(sum(lengths))
        starts = pool_from or [0] * len(texts)
        structure = blocks or [()] * len(texts)
        vecs = await self.encoder.submit(list(zip(texts, lengths, starts, structure, strict=True)))
        return np.stack(vecs)

    async def encode_documents(self, texts: list[str]) -> tuple[np.ndarray, int]:
        lengths = [int(x) for x in token_lengths(self.model, texts)]
        return await self.encode(texts, lengths, "document"), sum(lengths)

    async def encode_queries(self, aug: list[AugmentedQuery]) -> np.ndarray:
        texts, lengths, pool_from, blocks = encode_columns(aug)
        return await self.encode(texts, lengths, "query", pool_from, blocks)

    def resolve_k(self, requested: int | None) -> int:
        return requested if requested is not None else default_k(self.model, self.settings.num_examples)

    async def augment(
        self, queries: list[str], col: Collection | None, k: int, given: list[list[Example]] | None = None
    ) -> list[AugmentedQuery]:
        """Examples (caller-supplied or retrieved from the collection's pool), then the budgeted string."""
        if given is not None:
            chosen = [[ScoredExample(e, float("nan")) for e in g] for g in given]
        elif k > 0 and col is not None:
            chosen = await self.selector.submit([(col, q, k) for q in queries])
        else:
            chosen = [[] for _ in queries]
        instruction = col.manifest.instruction if col is not None else None
        out = [self.augmenter.build(q, ex, instruction) for q, ex in zip(queries, chosen, strict=True)]
        for a in out:
            self.metrics.examples.observe(len(a.examples))
        return out

    async def search(
        self,
        queries: list[str],
        col: Collection,
        top_k: int,
        k: int,
        given: list[list[Example]] | None = None,
    ) -> list[QueryResult]:
        if top_k > self.settings.max_top_k:
            raise BadRequestError(f"top_k must be at most {self.settings.max_top_k}")
        aug = await self.augment(queries, col, k, given)
        vecs = await self.encode_queries(aug)
        hits = await self.searcher.submit([(col, v, top_k) for v in vecs])
        return [QueryResult(col, h, a) for h, a in zip(hits, aug, strict=True)]

    # ---------- writes ----------
    async def upsert_documents(self, name: str, docs: list[tuple[str, str, str]]) -> Collection:
        from rare.beir_data import doc_text

        col = await self.writable_collection(name)
        emb, _ = await self.encode_documents([doc_text(t, x) for _, t, x in docs])
        await asyncio.to_thread(col.upsert_documents, docs, emb)
        return col

    async def delete_document(self, name: str, doc_id: str) -> bool:
        col = self.collection(name)
        return await asyncio.to_thread(col.delete_document, doc_id)

    async def upsert_examples(self, name: str, pairs: list[tuple[str, str]]) -> tuple[Collection, list[str]]:
        col = await self.writable_collection(name)
        exs = [Example(example_id(q, d), q, d) for q, d in pairs]
        await asyncio.to_thread(col.upsert_examples, exs)
        return col, [e.id for e in exs]

    async def delete_example(self, name: str, ex_id: str) -> bool:
        col = self.collection(name)
        return await asyncio.to_thread(col.delete_example, ex_id)

    # ---------- health ----------
    async def check(self) -> None:
        """Really run the model and each index; raise if either fails."""
        if self.model is None or self.encoder is None:
            raise UnavailableError("model not loaded")
        t = time.perf_counter()
        vec = await self.encode(["health check"], [4], "health")
        for col in list(self.collections.values()):
            await asyncio.to_thread(col.search, vec, 1)
        log.debug("health check %.1f ms", (time.perf_counter() - t) * 1000)

    def info(self) -> dict:
        m = self.model
        return {
            "model": m.info() if m else None,
            "rare": {
                "default_num_examples": default_k(m, self.settings.num_examples) if m else None,
                "example_doc_tokens": self.augmenter.builder.example_doc_tokens if self.augmenter else None,
                "max_query_tokens": self.augmenter.builder.max_tokens if self.augmenter else None,
                "pooling": self.augmenter.pooling if self.augmenter else None,
                "attention": self.augmenter.attention if self.augmenter else None,
                "format": FORMAT_DESCRIPTION,
            },
            "encode_workers": self.pool.size if self.pool else 1,
            "collections": {n: c.stats() for n, c in self.collections.items()},
            "unavailable": self.unavailable,
        }


def _per_collection(items: list[tuple[Collection, Any, int]], call: Callable) -> list[list]:
    """One `call(collection, inputs, largest k)` per collection of a batch of (collection, input, k);
    each item gets the first k of its ranked list (most similar first, so that is its own top k)."""
    out: list = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for i, (col, _, _) in enumerate(items):
        groups.setdefault(id(col), []).append(i)
    for idxs in groups.values():
        ranked = call(items[idxs[0]][0], [items[i][1] for i in idxs], max(items[i][2] for i in idxs))
        for i, r in zip(idxs, ranked, strict=True):
            out[i] = r[: items[i][2]]
    return out
