"""Bounded loopback load: mixed searches and writes against a real `rare serve`, then a durability audit.

    python bench/load.py --requests 20000 --concurrency 64

Mix per 20 requests: 13 plain searches, 3 searches with examples, 2 document upserts, 1 document delete
(of a document whose upsert was acknowledged), 1 example upsert or delete. Afterwards the server is
killed with SIGKILL, the collection is reopened from disk, and every acknowledged write must be there and
every acknowledged delete gone. Requirements: zero 5xx; 429 only as backpressure. Traffic goes to
127.0.0.1 only and stops after --requests or --max-seconds. Results: bench/results/load.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, ROOT, percentile_ms, start_server  # noqa: E402

WORDS = [
    "volcano",
    "insulin",
    "glacier",
    "honey",
    "tides",
    "compiler",
    "rainbow",
    "vaccine",
    "coral",
    "bread",
]


async def drive(url: str, n: int, concurrency: int, max_seconds: float) -> dict:
    import httpx

    lat: dict[str, list[float]] = {}
    status: Counter = Counter()
    docs_acked: set[str] = set()
    docs_deleted: set[str] = set()
    ex_acked: set[str] = set()
    ex_deleted: set[str] = set()
    deletable: list[str] = []
    ex_deletable: list[str] = []
    deadline = time.monotonic() + max_seconds
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:

        async def one(i: int) -> None:
            slot = i % 20
            w = WORDS[i % len(WORDS)]
            if slot < 13:
                kind, req = (
                    "search",
                    c.post("/search", json={"query": f"{w} question {i}", "collection": "load"}),
                )
            elif slot < 16:
                kind = "search_examples"
                req = c.post(
                    "/search", json={"query": f"how does a {w} work", "collection": "load", "num_examples": 2}
                )
            elif slot < 18:
                kind = "upsert_doc"
                req = c.post(
                    "/collections/load/documents",
                    json=[{"id": f"doc-{i}", "title": w, "text": f"Load document {i} about {w}."}],
                )
            elif slot == 18 and deletable:
                kind, victim = "delete_doc", deletable.pop()
                req = c.delete(f"/collections/load/documents/{victim}")
            elif i % 40 == 19 or not ex_deletable:
                kind = "upsert_example"
                req = c.post(
                    "/collections/load/examples",
                    json=[{"query": f"what about {w} {i}", "document": f"An answer about {w} {i}."}],
                )
            else:
                kind, victim = "delete_example", ex_deletable.pop()
                req = c.delete(f"/collections/load/examples/{victim}")
            t = time.perf_counter()
            r = await req
            lat.setdefault(kind, []).append(time.perf_counter() - t)
            status[r.status_code] += 1
            if r.status_code != 200:
                return
            if kind == "upsert_doc":
                docs_acked.add(f"doc-{i}")
                deletable.append(f"doc-{i}")
            elif kind == "delete_doc":
                docs_deleted.add(victim)
            elif kind == "upsert_example":
                ex_acked.update(r.json()["ids"])
                ex_deletable.extend(r.json()["ids"])
            elif kind == "delete_example":
                ex_deleted.add(victim)

        async def worker() -> None:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                await one(i)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    everything = [x for v in lat.values() for x in v]
    return {
        "requests": sum(status.values()),
        "seconds": round(wall, 1),
        "rps": round(sum(status.values()) / wall, 1),
        "p50_ms": percentile_ms(everything, 50),
        "p95_ms": percentile_ms(everything, 95),
        "p99_ms": percentile_ms(everything, 99),
        "by_kind": {
            k: {"n": len(v), "p50_ms": round(1000 * statistics.median(v), 1), "p99_ms": percentile_ms(v, 99)}
            for k, v in lat.items()
        },
        "status": dict(status),
        "_docs": (docs_acked, docs_deleted),
        "_examples": (ex_acked, ex_deleted),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=1500)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--server-log", type=Path, default=None, help="keep the server's log here")
    args = ap.parse_args()

    from rare.collection import Collection
    from rare.indexer import index_beir
    from rare.model import load_model

    model = load_model(None, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        index_beir(data, "load", model, ROOT / "sample" / "tiny", show_progress=False)
        env = {"RARE_LOG_LEVEL": "warning", "RARE_MAX_QUEUE": str(args.max_queue)}
        server_log = args.server_log or data / "server.log"
        server, url = start_server(data, env, log=server_log)
        try:
            res = asyncio.run(drive(url, args.requests, args.concurrency, args.max_seconds))
        finally:
            server.send_signal(signal.SIGKILL)  # the audit reads what was made durable, nothing more
            server.wait()
        docs_acked, docs_deleted = res.pop("_docs")
        ex_acked, ex_deleted = res.pop("_examples")
        col = Collection.open(data, "load", model, writable=False)
        audit = {
            "docs_acked": len(docs_acked),
            "docs_deleted": len(docs_deleted),
            "missing_docs": len((docs_acked - docs_deleted) - set(col.docs)),
            "resurrected_docs": len(docs_deleted & set(col.docs)),
            "examples_acked": len(ex_acked),
            "examples_deleted": len(ex_deleted),
            "missing_examples": len((ex_acked - ex_deleted) - set(col.examples)),
            "resurrected_examples": len(ex_deleted & set(col.examples)),
        }
        tracebacks = server_log.read_text(errors="replace").count("Traceback")
    five_xx = sum(v for k, v in res["status"].items() if int(k) >= 500)
    res.update(
        {
            "audit": audit,
            "server_tracebacks": tracebacks,
            "5xx": five_xx,
            "concurrency": args.concurrency,
            "ok": five_xx == 0
            and not any(audit[k] for k in audit if k.startswith(("missing", "resurrected")))
            and set(res["status"]) <= {200, 404, 429},
        }
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "load.json").write_text(json.dumps(res, indent=2) + "\n")
    md = [
        f"{res['requests']} requests at concurrency {args.concurrency} in {res['seconds']} s: "
        f"{res['rps']} req/s, "
        f"p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms, p99 {res['p99_ms']} ms; statuses {res['status']}; "
        f"5xx: {five_xx}.",
        "",
        "| kind | n | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *[f"| {k} | {v['n']} | {v['p50_ms']} | {v['p99_ms']} |" for k, v in sorted(res["by_kind"].items())],
        "",
        f"Audit after SIGKILL and reload from disk: {audit}.",
    ]
    (OUT / "load.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
