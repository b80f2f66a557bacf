"""Service throughput and latency on loopback vs raw in-process encoding of the same query strings.

    python bench/service.py --beir ../shared/data/beir/scifact

Starts `rare serve` on a free 127.0.0.1 port over a SciFact collection (built under --data-dir if missing),
sends the test queries at concurrency 1, 8 and 32 as (a) plain searches and (b) searches with k examples,
the latter once per per-example document budget (a server per budget, RARE_EXAMPLE_DOC_TOKENS), with a
light keep-alive client (bench.common.RawHttp); then, with the servers gone, encodes the same strings
in-process (plain and augmented exactly as the server builds them). Targets: server rps >= 0.9x raw
encode rate of the same texts; k-example search cost <= 3x plain. Bounded: a fixed number of requests
per cell. Results: bench/results/service.json and .md.
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

from bench.common import OUT, ROOT, RawHttp, percentile_ms, start_server  # noqa: E402


async def load(url: str, queries: list[str], collection: str, k: int, concurrency: int, n: int) -> dict:
    bodies = [
        json.dumps({"query": q, "collection": collection, "top_k": 10, "num_examples": k}).encode()
        for q in queries
    ]
    lat: list[float] = []
    errors: dict[int, int] = {}
    used: list[int] = []
    todo = iter(range(n))

    async def worker():
        async with RawHttp(url) as http:
            for i in todo:
                t = time.perf_counter()
                status, body = await http.post("/search", bodies[i % len(bodies)])
                lat.append(time.perf_counter() - t)
                if status != 200:
                    errors[status] = errors.get(status, 0) + 1
                elif i < len(bodies):  # examples actually used, from each query's first answer
                    used.append(json.loads(body)["num_examples"])

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
        "mean_examples_used": round(statistics.mean(used), 2) if used else 0.0,
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "var")
    ap.add_argument("--collection", default="scifact")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument(
        "--requests", type=int, default=300, help="requests per k-example cell (distinct queries)"
    )
    ap.add_argument(
        "--plain-requests",
        type=int,
        default=1500,
        help="requests per plain cell (cheap, so more for a stable rate)",
    )
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument(
        "--example-doc-tokens",
        default="64,32,16",
        help="per-example document budgets to measure k-example search at (the first is the default)",
    )
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
    queries = [ds.queries[q] for q in sorted(ds.split("test"))][: args.requests]
    levels = [int(x) for x in args.concurrency.split(",")]
    budgets = [int(x) for x in args.example_doc_tokens.split(",")]

    rows = []
    for bi, budget in enumerate(budgets):
        env = {
            "RARE_MAX_QUEUE": "100000",
            "RARE_LOG_LEVEL": "warning",
            "RARE_EXAMPLE_DOC_TOKENS": str(budget),
        }
        server, url = start_server(args.data_dir, env)
        try:
            asyncio.run(load(url, queries, args.collection, args.k, 4, 40))  # warm up
            for c in levels:
                for k in (0, args.k) if bi == 0 else (args.k,):
                    row = {"example_doc_tokens": budget if k else None}
                    n = args.requests if k else args.plain_requests
                    row |= asyncio.run(load(url, queries, args.collection, k, c, n))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)

    # Raw in-process encode of the same strings, with the server gone.
    col = Collection.open(args.data_dir, args.collection, model, writable=False)
    chosen = col.select_examples(queries, args.k)
    # Plain is the variant without examples; each variant is built (text and token count) once.
    variants = {"plain": (QueryAugmenter(model), [[] for _ in queries])}
    variants |= {b: (QueryAugmenter(model, example_doc_tokens=b), chosen) for b in budgets}
    texts, tokens = {}, {}
    for name, (aug, examples) in variants.items():
        built = [aug.build(q, ex, col.manifest.instruction) for q, ex in zip(queries, examples, strict=True)]
        texts[name] = [a.text for a in built]
        tokens[name] = round(statistics.mean(a.tokens for a in built), 1)
    raw = {}
    for name, strings in texts.items():
        best = min(_timed(model, strings) for _ in range(2))
        raw[name] = round(len(strings) / best, 2)

    summary = []
    for budget in budgets:
        for c in levels:
            p = next(r for r in rows if r["concurrency"] == c and r["k"] == 0)
            a = next(r for r in rows if r["concurrency"] == c and r["example_doc_tokens"] == budget)
            summary.append(
                {
                    "example_doc_tokens": budget,
                    "concurrency": c,
                    "plain_rps": p["rps"],
                    "k_rps": a["rps"],
                    "plain_vs_raw": round(p["rps"] / raw["plain"], 3),
                    "k_vs_raw": round(a["rps"] / raw[budget], 3),
                    "k_cost_x": round(p["rps"] / a["rps"], 2),
                    "k_latency_x": round(a["p50_ms"] / p["p50_ms"], 2),
                }
            )
    OUT.mkdir(exist_ok=True)
    result = {
        "k": args.k,
        "mean_query_tokens": {str(k): v for k, v in tokens.items()},
        "raw_encode_per_s": {str(k): v for k, v in raw.items()},
        "rows": rows,
        "summary": summary,
        "targets": {"server_vs_raw": 0.9, "k_cost_x_max": 3.0},
    }
    (OUT / "service.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"{len(queries)} distinct SciFact test queries: {args.requests} requests per k-example cell, "
        f"{args.plain_requests} per plain cell (the queries cycled). Raw in-process encode of the same "
        f"strings (mean tokens in brackets): plain {raw['plain']}/s ({tokens['plain']}), "
        + ", ".join(f"{args.k} examples at {b}-token documents {raw[b]}/s ({tokens[b]})" for b in budgets)
        + ".",
        "",
        "| concurrency | examples | example doc tokens | req/s | p50 ms | p99 ms | examples used | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['concurrency']} | {r['k']} | {r['example_doc_tokens'] or '-'} | {r['rps']} | {r['p50_ms']} "
        f"| {r['p99_ms']} | {r['mean_examples_used']} | {r['errors'] or 0} |"
        for r in rows
    ]
    lines += [
        "",
        "| example doc tokens | concurrency | plain / raw | k / raw | k cost (plain/k rps) | k/plain p50 |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['example_doc_tokens']} | {s['concurrency']} | {s['plain_vs_raw']} | {s['k_vs_raw']} "
        f"| {s['k_cost_x']}x | {s['k_latency_x']}x |"
        for s in summary
    ]
    (OUT / "service.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _timed(model, texts: list[str]) -> float:
    t = time.perf_counter()
    model.st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
