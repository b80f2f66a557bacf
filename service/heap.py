"""Keeps the cyclic garbage collector's full collections off the request path."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Move every object alive now (model, tokenizer, BM25 indices, collections) into the collector's
    permanent generation, so a full collection scans only what serving allocated since: measured under
    load before this (plain search, concurrency 32), full collections over the start-up heap stopped the
    server process and each encode worker for 0.2-0.4 s with nothing to collect, and every request in
    flight waited (p99 ~300 ms against a p50 of ~65). Reference counting still frees frozen objects;
    only reference cycles among them are never collected. Returns the objects frozen in all."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
