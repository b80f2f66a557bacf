"""Latency tail with and without the start-up heap frozen out of Python's full garbage collections.

    python bench/gc_pause.py --beir ../shared/data/beir/scifact

A real server on 127.0.0.1 over the SciFact collection (built under --data-dir if missing), started
alternately with RARE_GC_FREEZE on and off, `--rounds` times each; per start, `--requests` plain searches
(the test queries cycled) from `--concurrency` keep-alive connections after a 300-request warm-up. A full
collection stops a process with every request in it waiting, so its mark is a cluster of requests each
slower than 3x the median: the report counts them and gives p50, p99 and max.
Bounded: a fixed number of requests per start. Results: bench/results/gc_pause.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ROOT,
    ensure_collection,
    machine,
    machine_line,
    percentile_ms,
    post_searches,
    start_server,
    write_results,
)


def drive(url: str, bodies: list[bytes], n: int, concurrency: int) -> list[float]:
    """Latencies (s) of `n` searches from `concurrency` connections; any answer but 200 stops the run."""

    def ok(_: int, status: int, __: bytes) -> None:
        if status != 200:
            raise RuntimeError(f"search answered {status}")

    return asyncio.run(post_searches(url, bodies, n, concurrency, ok))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "var")
    ap.add_argument("--collection", default="scifact")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from rare.beir_data import load_beir
    from rare.model import load_model

    ensure_collection(args.data_dir, args.collection, args.beir, lambda: load_model(None, "cpu"))
    ds = load_beir(args.beir, ["test"])
    bodies = [
        json.dumps({"query": ds.queries[q], "collection": args.collection, "num_examples": 0}).encode()
        for q in sorted(ds.split("test"))
    ]
    runs = []
    for r in range(args.rounds):
        for freeze in (True, False) if r % 2 == 0 else (False, True):
            proc, url = start_server(args.data_dir, {"RARE_GC_FREEZE": str(freeze).lower()})
            try:
                drive(url, bodies, 300, args.concurrency)  # warm-up
                lat = drive(url, bodies, args.requests, args.concurrency)
            finally:
                proc.terminate()
                proc.wait(30)
            p50 = statistics.median(lat)
            row = {
                "gc_freeze": freeze,
                "requests": len(lat),
                "p50_ms": percentile_ms(lat, 50),
                "p99_ms": percentile_ms(lat, 99),
                "max_ms": round(1000 * max(lat), 1),
                "over_3x_p50": sum(x > 3 * p50 for x in lat),
            }
            runs.append(row)
            print(json.dumps(row), flush=True)

    m = machine()
    result = {"machine": m, "concurrency": args.concurrency, "runs": runs}
    lines = [
        f"Plain searches at concurrency {args.concurrency} on loopback, bundled model, server defaults but "
        f"RARE_GC_FREEZE; runs in the order made. {machine_line(m)}",
        "",
        "| gc freeze | requests | p50 ms | p99 ms | max ms | requests over 3x p50 |",
        "|---|---|---|---|---|---|",
    ] + [
        f"| {'on' if r['gc_freeze'] else 'off'} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} "
        f"| {r['max_ms']} | {r['over_3x_p50']} |"
        for r in runs
    ]
    write_results("gc_pause", result, lines)


if __name__ == "__main__":
    main()
