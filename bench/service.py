"""Service throughput and latency on loopback vs raw in-process encoding of the same query strings.

    python bench/service.py --beir ../shared/data/beir/scifact

Starts `rare serve` on a free 127.0.0.1 port over a SciFact collection (built under --data-dir if missing),
sends the test queries at concurrency 1, 8 and 32 as (a) plain searches and (b) searches with k examples,
then, with the server idle, encodes the same strings in-process (plain and augmented exactly as the server
builds them). Targets: server rps >= 0.9x raw encode rate of the same texts; k-example search cost <= 3x
plain. Bounded: a fixed number of requests per cell. Results: bench/results/service.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, ROOT, percentile_ms, start_server  # noqa: E402


async def load(url: str, queries: list[str], collection: str, k: int, concurrency: int, n: int) -> dict:
    import httpx

    lat: list[float] = []
    errors: dict[int, int] = {}
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker():
            for i in todo:
                body = {
                    "query": queries[i % len(queries)],
                    "collection": collection,
                    "top_k": 10,
                    "num_examples": k,
                }
                t = time.perf_counter()
                r = await client.post("/search", json=body)
                lat.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "k": k,
        "concurrency": concurrency,
        "requests": n,
        "rps": round(n / wall, 2),
        "p50_ms": round(1000 * statistics.median(lat), 1),
        "p99_ms": percentile_ms(lat, 99),
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "var")
    ap.add_argument("--collection", default="scifact")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--requests", type=int, default=300, help="requests per (mode, concurrency) cell")
    ap.add_argument("--concurrency", default="1,8,32")
    args = ap.parse_args()

    from rare.beir_data import load_beir
    from rare.collection import Collection, collections_root
    from rare.indexer import index_beir
    from rare.model import load_model
    from rare.query import QueryAugmenter

    model = load_model(None, "cpu")
    if not (collections_root(args.data_dir) / args.collection / "CURRENT").is_file():
        print(f"building collection {args.collection} ...", flush=True)
        index_beir(args.data_dir, args.collection, model, args.beir)
    ds = load_beir(args.beir, ["test"])
    queries = [ds.queries[q] for q in sorted(ds.split("test"))]

    server, url = start_server(args.data_dir, {"RARE_MAX_QUEUE": "100000", "RARE_LOG_LEVEL": "warning"})
    rows = []
    try:
        asyncio.run(load(url, queries, args.collection, args.k, 4, 40))  # warm up
        for c in [int(x) for x in args.concurrency.split(",")]:
            for k in (0, args.k):
                row = asyncio.run(load(url, queries, args.collection, k, c, args.requests))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)

    # Raw in-process encode of the same strings, with the server gone.
    col = Collection.open(args.data_dir, args.collection, model, writable=False)
    aug = QueryAugmenter(model)
    chosen = col.select_examples(queries, args.k)
    plain_texts = [aug.build(q, [], col.manifest.instruction).text for q in queries]
    rare_texts = [
        aug.build(q, ex, col.manifest.instruction).text for q, ex in zip(queries, chosen, strict=True)
    ]
    raw = {}
    for name, texts in (("plain", plain_texts), ("k", rare_texts)):
        best = min(_timed(model, texts) for _ in range(2))
        raw[name] = round(len(texts) / best, 2)
    summary = []
    for c in sorted({r["concurrency"] for r in rows}):
        p = next(r for r in rows if r["concurrency"] == c and r["k"] == 0)
        a = next(r for r in rows if r["concurrency"] == c and r["k"] == args.k)
        summary.append(
            {
                "concurrency": c,
                "plain_rps": p["rps"],
                "k_rps": a["rps"],
                "plain_vs_raw": round(p["rps"] / raw["plain"], 3),
                "k_vs_raw": round(a["rps"] / raw["k"], 3),
                "k_cost_x": round(p["rps"] / a["rps"], 2),
            }
        )
    OUT.mkdir(exist_ok=True)
    result = {
        "k": args.k,
        "raw_encode_per_s": raw,
        "rows": rows,
        "summary": summary,
        "targets": {"server_vs_raw": 0.9, "k_cost_x_max": 3.0},
    }
    (OUT / "service.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Raw in-process encode of the same strings: plain {raw['plain']}/s, "
        f"with {args.k} examples {raw['k']}/s.",
        "",
        "| concurrency | examples | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['concurrency']} | {r['k']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors'] or 0} |"
        for r in rows
    ]
    lines += ["", "| concurrency | plain / raw | k / raw | k cost (plain rps / k rps) |", "|---|---|---|---|"]
    lines += [
        f"| {s['concurrency']} | {s['plain_vs_raw']} | {s['k_vs_raw']} | {s['k_cost_x']}x |" for s in summary
    ]
    (OUT / "service.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _timed(model, texts: list[str]) -> float:
    t = time.perf_counter()
    model.st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
