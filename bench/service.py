"""Service throughput and latency on loopback vs raw in-process encoding of the same query strings.

    python bench/service.py --beir ../shared/data/beir/scifact
    python bench/service.py --beir ../shared/data/beir/scifact --model var/models/scifact-k3-qb

Starts `rare serve` on a free 127.0.0.1 port over a SciFact collection (built under --data-dir if missing),
sends the test queries at concurrency 1, 8 and 32 as (a) plain searches and (b) searches with k examples,
the latter once per per-example document budget (a server per budget, RARE_EXAMPLE_DOC_TOKENS), with a
light keep-alive client (bench.common.RawHttp). Right before and after each cell, with the server idle,
it encodes the same strings in-process (plain and augmented exactly as the server builds them) to the
same embeddings (`bench.common.raw_encode`); the cell's raw rate is the mean of the two. The server runs
with its defaults (encode worker processes: one per core up to 4 on CPU). Each cell also records the CPU each
process spent per request (server process, encode workers, this client; from /proc on Linux) beside
the raw run's CPU per text: where the client shares the server's cores, their ratio bounds `vs raw`.
Targets: server rps >= 0.9x raw encode rate of the same texts; k-example search cost <= 3x plain.
Under block attention (a model trained with it, --model, its collection under var/bench-data/<model>;
or the bundled model, whose own it is) the first pass over the queries after start-up is reported with
the server's start-up time (a server that searches with examples by default, a RARe model's, puts the
pools' examples into every worker's example cache before it is ready, as much as fits; the bundled
model's, plain by default, fills them on use); passes at the highest concurrency then fill every
worker's cache before the cells; each row gives the caches' hit rate.
Bounded: a fixed number of requests per cell. Results:
bench/results/service[-<model>][-<attention>][-<dtype>].json and .md (no attention suffix: the model's
own; no dtype suffix: float32; with BENCH_OUT=DIR, under DIR instead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from urllib.request import urlopen

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ROOT,
    ensure_collection,
    machine,
    machine_line,
    percentile_ms,
    post_searches,
    raw_encode,
    server_cpu,
    start_server,
    write_results,
)


async def load(
    url: str, queries: list[str], collection: str, k: int, concurrency: int, n: int, pid: int | None = None
) -> dict:
    """One cell: `n` searches from `concurrency` connections; with the server's `pid`, the CPU each
    process spent per request (server process, its encode workers, this client)."""
    bodies = [
        json.dumps({"query": q, "collection": collection, "top_k": 10, "num_examples": k}).encode()
        for q in queries
    ]
    errors: dict[int, int] = {}
    used: list[int] = []

    def on_reply(i: int, status: int, body: bytes) -> None:
        if status != 200:
            errors[status] = errors.get(status, 0) + 1
        elif i < len(bodies):  # examples actually used, from each query's first answer
            used.append(json.loads(body)["num_examples"])

    before = await cache_counts(url)
    if not Path("/proc/self/stat").is_file():  # per-process CPU is read from /proc (Linux)
        pid = None
    cpu0 = (*server_cpu(pid), time.process_time()) if pid else None
    t0 = time.perf_counter()
    lat = await post_searches(url, bodies, n, concurrency, on_reply)
    wall = time.perf_counter() - t0
    cpu = [b - a for a, b in zip(cpu0, (*server_cpu(pid), time.process_time()), strict=True)] if pid else []
    after = await cache_counts(url)
    looked_up = sum(after) - sum(before)
    return {
        "k": k,
        "concurrency": concurrency,
        "requests": n,
        "rps": round(n / wall, 2),
        "p50_ms": round(1000 * statistics.median(lat), 1),
        "p99_ms": percentile_ms(lat, 99),
        "mean_examples_used": round(statistics.mean(used), 2) if used else 0.0,
        "errors": errors,
        "example_cache_hit_rate": round((after[0] - before[0]) / looked_up, 3) if looked_up else None,
    } | (
        {
            "cpu_ms_per_request": dict(
                zip(("server", "workers", "client"), (round(1000 * c / n, 2) for c in cpu), strict=True)
            ),
            "cores_busy": round(sum(cpu) / wall, 2),
        }
        if cpu
        else {}
    )


async def cache_counts(url: str) -> tuple[float, float]:
    """(hits, misses) of the block-attention example cache, from /metrics; zeros without one."""
    import httpx

    async with httpx.AsyncClient(base_url=url) as c:
        text = (await c.get("/metrics")).text
    found = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("rare_example_cache_")
    }
    return found.get("rare_example_cache_hits_total", 0.0), found.get("rare_example_cache_misses_total", 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument(
        "--data-dir",
        type=Path,
        help="default: var, or var/bench-data/<model dir name> with --model (a server refuses collections "
        "built with another model, and reports not ready)",
    )
    ap.add_argument("--model", help="model directory (default: the bundled all-MiniLM-L6-v2)")
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
        "--dtype",
        default="auto",
        help="number format of the server and the raw runs alike (RARE_DTYPE): auto = bfloat16 on a CPU "
        "with AMX or AVX512-BF16, else float32; results of a format other than float32 are named after it",
    )
    ap.add_argument(
        "--attention",
        choices=["full", "block"],
        help="RARE_ATTENTION of the server and the raw runs alike; default the model's own (block for "
        "the bundled model); results of a run with it given are named after it",
    )
    ap.add_argument(
        "--example-doc-tokens",
        default="64,32,16",
        help="per-example document budgets to measure k-example search at (the first is the default)",
    )
    args = ap.parse_args()

    from rare.beir_data import load_beir
    from rare.collection import Collection
    from rare.model import load_model
    from rare.query import QueryAugmenter, resolve_attention

    model = load_model(args.model, "cpu", args.dtype)
    attention, pooling = resolve_attention(model, args.attention)
    if args.data_dir is None:
        args.data_dir = (
            ROOT / "var" if not args.model else ROOT / "var" / "bench-data" / Path(args.model).name
        )
    ensure_collection(args.data_dir, args.collection, args.beir, lambda: model)
    ds = load_beir(args.beir, ["test"])
    queries = [ds.queries[q] for q in sorted(ds.split("test"))][: args.requests]
    levels = [int(x) for x in args.concurrency.split(",")]
    budgets = [int(x) for x in args.example_doc_tokens.split(",")]

    # The same strings the server builds (plain, and with examples per budget), each built once.
    col = Collection.open(args.data_dir, args.collection, model, writable=False)
    chosen = col.select_examples(queries, args.k)
    variants = {"plain": (QueryAugmenter(model, attention=attention), [[] for _ in queries])}
    variants |= {
        b: (QueryAugmenter(model, example_doc_tokens=b, attention=attention), chosen) for b in budgets
    }
    built, tokens = {}, {}
    if attention == "block":
        # Every variant's examples stay cached in-process (~1 GB a budget), so no raw pass pays misses.
        model.block_encoder.cache_bytes = 8 << 30
    for name, (aug, examples) in variants.items():
        built[name] = [
            aug.build(q, ex, col.manifest.instruction) for q, ex in zip(queries, examples, strict=True)
        ]
        tokens[name] = round(statistics.mean(a.tokens for a in built[name]), 1)
        raw_encode(model, built[name])  # warms the in-process example cache
    col.close()

    def raw(name) -> tuple[float, float]:
        """(texts a second, CPU ms a text) of in-process encoding."""
        wall, cpu = raw_encode(model, built[name])
        return len(built[name]) / wall, 1000 * cpu / len(built[name])

    rows, first = [], []
    for bi, budget in enumerate(budgets):
        env = {
            "RARE_MAX_QUEUE": "100000",
            "RARE_LOG_LEVEL": "warning",
            "RARE_EXAMPLE_DOC_TOKENS": str(budget),
            "RARE_DTYPE": model.dtype,
            "RARE_ATTENTION": attention,
        } | ({"RARE_MODEL": str(Path(args.model).resolve())} if args.model else {})
        started = time.perf_counter()
        server, url = start_server(args.data_dir, env)
        ready_s = round(time.perf_counter() - started, 1)
        try:
            asyncio.run(load(url, queries, args.collection, args.k, 4, 40))  # warm up
            if attention == "block":
                # The first pass over the queries after start-up is reported: what a restart costs.
                # Each encode worker keeps its own cache, and at low concurrency one worker takes every
                # batch; at high concurrency an example seen once reaches one worker of the two, so
                # further passes at the highest concurrency (not reported) run until every worker's
                # cache hits (99.5%), and the cells measure the warm steady state.
                row = {"example_doc_tokens": budget, "phase": "first pass", "ready_s": ready_s}
                row |= asyncio.run(load(url, queries, args.collection, args.k, 8, len(queries)))
                for row["warm_passes"] in range(1, 13):
                    warm = asyncio.run(load(url, queries, args.collection, args.k, max(levels), len(queries)))
                    if (warm["example_cache_hit_rate"] or 1.0) >= 0.995:  # None: nothing looked up
                        break
                row["warm_hit_rate"] = warm["example_cache_hit_rate"]
                first.append(row)
                print(json.dumps(row), flush=True)
            for c in levels:
                for k in (0, args.k) if bi == 0 else (args.k,):
                    # Raw in-process encode of the same strings right before and after the cell (the
                    # server idle): this machine's speed drifts by 10-20% within minutes.
                    name = budget if k else "plain"
                    before = raw(name)
                    row = {"example_doc_tokens": budget if k else None}
                    n = args.requests if k else args.plain_requests
                    row |= asyncio.run(load(url, queries, args.collection, k, c, n, server.pid))
                    after = raw(name)
                    row["raw_per_s"] = round((before[0] + after[0]) / 2, 2)
                    row["raw_cpu_ms"] = round((before[1] + after[1]) / 2, 2)
                    row["vs_raw"] = round(row["rps"] / row["raw_per_s"], 3)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            info = json.loads(urlopen(url + "/info").read())
        finally:
            server.terminate()
            server.wait(timeout=60)

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
                    "plain_vs_raw": p["vs_raw"],
                    "k_vs_raw": a["vs_raw"],
                    "k_cost_x": round(p["rps"] / a["rps"], 2),
                    "k_latency_x": round(a["p50_ms"] / p["p50_ms"], 2),
                }
            )
    result = {
        "machine": machine(),
        "model": model.name,
        "attention": attention,
        "dtype": model.dtype,
        "encode_workers": info["encode_workers"],
        "k": args.k,
        "mean_query_tokens": {str(k): v for k, v in tokens.items()},
        "rows": rows,
        "first_pass_rows": first,
        "summary": summary,
        "targets": {"server_vs_raw": 0.9, "k_cost_x_max": 3.0},
    }
    stem = "service" if not args.model else f"service-{Path(args.model).name}"
    stem += f"-{args.attention}" if args.attention else ""
    stem += "" if model.dtype == "float32" else f"-{model.dtype}"
    lines = [
        f"Model {model.name} (attention {attention}, pooling {pooling}, "
        f"{model.dtype}), "
        f"{info['encode_workers']} encode worker(s). {len(queries)} distinct SciFact test queries: "
        f"{args.requests} requests per k-example cell, {args.plain_requests} per plain cell (the queries "
        f"cycled). Mean tokens per query string: plain {tokens['plain']}, "
        + ", ".join(f"{args.k} examples at {b}-token documents {tokens[b]}" for b in budgets)
        + ". Raw: in-process encode of the same strings, measured right before and after each cell. "
        + machine_line(result["machine"]),
        "",
        "CPU ms a request: what the server process, its encode workers and this client used over the cell, "
        "per request (/proc); raw CPU ms: in-process CPU per text. CPU share = raw CPU ms / the request's "
        "CPU ms: the most `vs raw` can reach with the cores as busy as in the raw run.",
        "",
        "| concurrency | examples | example doc tokens | req/s | raw /s | vs raw | p50 ms | p99 ms "
        "| examples used | errors | example cache hits | CPU ms a request (server / workers / client) "
        "| raw CPU ms | CPU share | cores busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['concurrency']} | {r['k']} | {r['example_doc_tokens'] or '-'} | {r['rps']} | {r['raw_per_s']} "
        f"| {r['vs_raw']} | {r['p50_ms']} | {r['p99_ms']} | {r['mean_examples_used']} | {r['errors'] or 0} "
        f"| {'-' if r['example_cache_hit_rate'] is None else r['example_cache_hit_rate']} | {_cpu_cells(r)} |"
        for r in rows
    ]
    lines += [
        f"| 8 (first pass, ready in {r['ready_s']} s; then {r['warm_passes']} warm, the last "
        f"{r['warm_hit_rate']}) | {r['k']} "
        f"| {r['example_doc_tokens']} | {r['rps']} | | | {r['p50_ms']} "
        f"| {r['p99_ms']} | {r['mean_examples_used']} | {r['errors'] or 0} | {r['example_cache_hit_rate']} "
        "| | | | |"
        for r in first
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
    write_results(stem, result, lines)


def _cpu_cells(row: dict) -> str:
    """The CPU columns of a cell: per process, raw, their ratio, cores busy ("-" without /proc)."""
    per = row.get("cpu_ms_per_request")
    if not per:
        return f"- | {row['raw_cpu_ms']} | - | -"
    share = round(row["raw_cpu_ms"] / sum(per.values()), 3)
    return f"{' / '.join(str(v) for v in per.values())} | {row['raw_cpu_ms']} | {share} | {row['cores_busy']}"


if __name__ == "__main__":
    main()
