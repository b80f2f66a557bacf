"""Prometheus metrics, on a registry of the app's own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rare_requests_total", "HTTP requests", ["endpoint", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "rare_request_duration_seconds",
            "HTTP request latency",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.queue = Gauge(
            "rare_queue_size", "Texts waiting to be batched", ["batcher"], registry=self.registry
        )
        self.batch_size = Histogram(
            "rare_batch_size",
            "Items per batch",
            ["batcher"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.tokens = Counter("rare_tokens_total", "Tokens encoded", ["kind"], registry=self.registry)
        self.examples = Histogram(
            "rare_examples_per_query",
            "In-context examples used per query",
            registry=self.registry,
            buckets=(0, 1, 2, 3, 4, 5, 8, 16, 32),
        )
        self.frozen = Gauge(
            "rare_gc_frozen_objects",
            "Start-up objects moved out of the garbage collector's full collections (service.heap)",
            registry=self.registry,
        )
        self.rejected = Counter(
            "rare_rejected_total", "Requests refused by backpressure", registry=self.registry
        )

    def watch_example_cache(self, stats: Callable[[], dict]) -> None:
        """Block attention's cache of example keys and values (rare.block_attention), read at scrape."""

        class _Collector:
            def collect(self):
                st = stats()
                yield CounterMetricFamily(
                    "rare_example_cache_hits", "Cached example blocks reused", st["hits"]
                )
                yield CounterMetricFamily(
                    "rare_example_cache_misses", "Example blocks encoded into the cache", st["misses"]
                )
                yield GaugeMetricFamily("rare_example_cache_bytes", "Bytes held by the cache", st["bytes"])
                yield GaugeMetricFamily(
                    "rare_example_cache_entries", "Blocks held by the cache", st["entries"]
                )

        self.registry.register(_Collector())
