"""The server's encode workers without HTTP, against raw in-process encoding of the same query strings.

    python bench/encode_pool.py --beir ../shared/data/beir/scifact [--dtype float32]

bench/service.py measures a search through HTTP against raw `SentenceTransformer.encode`; this bench takes
the HTTP layer away. It starts the encode processes `rare serve` would start (the same `WorkerSpec`, from
the same settings: RARE_ENCODE_WORKERS, ...) and drives them from one thread per worker in this process
with the plain test queries, in batches of fixed size, the columns `rare serve` sends
(`QueryAugmenter.build`, `encode_columns`). Raw in-process encoding of the same strings runs before the
workers start and after they stop. Between this bench's `pool / raw` at the batch sizes the server forms
(its /metrics: ~9 queries at concurrency 32) and bench/service.py's `vs raw` lies what the HTTP layer and
the engine cost on the same cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, machine_line, raw_encode, server_cpu, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--model", help="model directory (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--dtype", default="auto", help="RARE_DTYPE of the workers and the raw runs alike")
    ap.add_argument("--batch-sizes", default="1,4,8,16,32")
    ap.add_argument("--texts", type=int, default=3000, help="texts encoded per pool cell (queries cycled)")
    args = ap.parse_args()

    from rare.beir_data import load_beir
    from rare.model import load_model, resolve_model_path
    from rare.prompt import encode_columns
    from rare.query import QueryAugmenter
    from rare.settings import Settings
    from service.encode_pool import EncodePool, WorkerSpec, plan_workers, usable_cpus

    model = load_model(args.model, "cpu", args.dtype)
    ds = load_beir(args.beir, ["test"])
    queries = [ds.queries[q] for q in sorted(ds.split("test"))]
    augs = [QueryAugmenter(model).build(q, [], None) for q in queries]
    texts, lengths, pool_from, blocks = encode_columns(augs)
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    def raw() -> tuple[float, float]:
        """(texts a second, CPU ms a text) of bench/service.py's raw reference; the median of three passes."""
        runs = [raw_encode(model, augs) for _ in range(3)]
        return sorted((len(augs) / wall, 1000 * cpu / len(augs)) for wall, cpu in runs)[1]

    # Raw runs before the workers start and after they stop: for some seconds after the workers had
    # started, raw encoding in this process measured up to 25% slower, the workers idle.
    raw()  # warm-up
    before = raw()
    s = Settings()  # RARE_ENCODE_WORKERS and the rest, as `rare serve` reads them
    workers, threads = plan_workers("cpu", s.encode_workers)
    if workers < 2:
        sys.exit("one encode worker: `rare serve` then encodes in its own process, with no worker pool")
    spec = WorkerSpec(
        resolve_model_path(args.model),
        "cpu",
        model.dtype,
        threads,
        usable_cpus(),
        s.example_cache_mb << 20,
        s.gc_freeze,
    )
    pool = EncodePool(spec, workers)
    pool.start()
    pool.wait_ready()

    def drive(size: int) -> dict:
        """`args.texts` texts through the pool in batches of `size`, one feeding thread per worker."""
        n_batches = max(workers, args.texts // size)
        starts = iter(range(n_batches))
        lock = threading.Lock()

        def feed() -> None:
            while True:
                with lock:  # next() on a shared iterator is not thread-safe by contract
                    b = next(starts, None)
                if b is None:
                    return
                idx = [(b * size + j) * 7 % len(texts) for j in range(size)]  # a stride mixes lengths
                pool.encode(*([col[i] for i in idx] for col in (texts, lengths, pool_from, blocks)))

        feed_threads = [threading.Thread(target=feed) for _ in range(workers)]
        c0, t0 = server_cpu(os.getpid()), time.perf_counter()
        for th in feed_threads:
            th.start()
        for th in feed_threads:
            th.join()
        wall, c1 = time.perf_counter() - t0, server_cpu(os.getpid())
        n = n_batches * size
        return {
            "texts_per_s": round(n / wall, 1),
            "worker_cpu_ms": round(1000 * (c1[1] - c0[1]) / n, 3),
            "driver_cpu_ms": round(1000 * (c1[0] - c0[0]) / n, 3),
            "cores_busy": round((c1[0] - c0[0] + c1[1] - c0[1]) / wall, 2),
        }

    rows = []
    try:
        drive(8)  # warm-up: first calls build oneDNN kernels in each worker
        for size in sizes:
            rows.append({"batch_size": size, **drive(size)})
            print(rows[-1], flush=True)
    finally:
        pool.close()
    time.sleep(10)
    after = raw()
    raw_per_s = (before[0] + after[0]) / 2
    for row in rows:
        row["pool_vs_raw"] = round(row["texts_per_s"] / raw_per_s, 3)

    result = {
        "machine": machine(),
        "model": model.name,
        "dtype": model.dtype,
        "encode_workers": workers,
        "threads_per_worker": threads,
        "mean_query_tokens": round(statistics.mean(lengths), 1),
        "queries": len(texts),
        "raw": {"before": [round(x, 3) for x in before], "after": [round(x, 3) for x in after]},
        "rows": rows,
    }
    lines = [
        f"Model {model.name} ({model.dtype}), {workers} encode worker(s) of {threads} thread(s), driven "
        f"without HTTP by {workers} thread(s) of this process; {len(texts)} plain {args.beir.name} test "
        f"queries ({result['mean_query_tokens']} tokens on average), {args.texts} texts a cell. Raw: "
        f"in-process `SentenceTransformer.encode` of the same strings, before the workers start and after "
        f"they stop (median of three each): {before[0]:.1f} and {after[0]:.1f} texts/s, {before[1]:.3f} and "
        f"{after[1]:.3f} ms CPU a text. " + machine_line(result["machine"]),
        "",
        "| batch size | pool texts/s | pool / raw | CPU ms a text (workers / driver) | cores busy |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['batch_size']} | {r['texts_per_s']} | {r['pool_vs_raw']} "
        f"| {r['worker_cpu_ms']} / {r['driver_cpu_ms']} | {r['cores_busy']} |"
        for r in rows
    ]
    stem = "encode_pool" if not args.model else f"encode_pool-{Path(args.model).name}"
    write_results(stem + ("" if model.dtype == "float32" else f"-{model.dtype}"), result, lines)


if __name__ == "__main__":  # spawned workers import this module; only the parent runs it
    main()
