"""Exact FAISS search: faiss 1.15's own switch to BLAS against the project's (rare.faiss_index), side by side.

    python bench/search.py

faiss 1.15 scans the vectors once per query below nq x d = 128000 and calls BLAS above; rare.faiss_index
lowers the switch to 1024 x OpenMP threads. This times `IndexFlatIP` searches (top 10) of nq random
unit queries over n random unit vectors of d dimensions (SciFact's corpus size, and 100k), on 1 and 2
OpenMP threads (the server searches on 1), both switches alternating, best of `--rounds`; CPU ms a
query. The two must return the same ids (scores within 1e-5). Results: bench/results/search.json, .md.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402
from rare import faiss_index as fx  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def unit(rng, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5183,100000")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", default="1,2,4,8,16,32,300")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    tuned = faiss.cvar.distance_compute_blas_threshold  # as rare.faiss_index left it at import
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        index = fx.flat_ip(unit(rng, n, args.dim))
        for threads in (int(x) for x in args.threads.split(",")):
            faiss.omp_set_num_threads(threads)
            switches = {"faiss": fx.FAISS_1_15_BLAS_THRESHOLD, "rare": fx.BLAS_WORK_PER_THREAD * threads}
            for nq in (int(x) for x in args.queries.split(",")):
                q = unit(rng, nq, args.dim)
                reps = max(2, int(4000 * 5183 / n / nq))  # ~the same work a cell
                best, found = {}, {}
                for _ in range(args.rounds):
                    for name, threshold in switches.items():
                        faiss.cvar.distance_compute_blas_threshold = threshold
                        found[name] = index.search(q, 10)
                        c = cpu_seconds()
                        for _ in range(reps):
                            index.search(q, 10)
                        ms = 1000 * (cpu_seconds() - c) / reps / nq
                        best[name] = min(best.get(name, ms), ms)
                same = bool(
                    np.array_equal(found["faiss"][1], found["rare"][1])
                    and np.allclose(found["faiss"][0], found["rare"][0], atol=1e-5)
                )
                rows.append(
                    {
                        "vectors": n,
                        "threads": threads,
                        "queries": nq,
                        "faiss_cpu_ms_per_query": round(best["faiss"], 4),
                        "rare_cpu_ms_per_query": round(best["rare"], 4),
                        "speedup": round(best["faiss"] / best["rare"], 2),
                        "same_results": same,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    faiss.cvar.distance_compute_blas_threshold = tuned

    lines = [
        f"FAISS IndexFlatIP, top 10, {args.dim} dimensions, random unit vectors; CPU ms a query, best of "
        f"{args.rounds} alternating rounds. faiss: its own switch to BLAS (nq x d >= "
        f"{fx.FAISS_1_15_BLAS_THRESHOLD}); rare: rare.faiss_index's ({fx.BLAS_WORK_PER_THREAD} x threads).",
        "",
        "| vectors | threads | queries a call | faiss's switch | rare's | speedup | same results |",
        "|---|---|---|---|---|---|---|",
    ] + [
        f"| {r['vectors']} | {r['threads']} | {r['queries']} | {r['faiss_cpu_ms_per_query']} | "
        f"{r['rare_cpu_ms_per_query']} | {r['speedup']}x | {'yes' if r['same_results'] else 'NO'} |"
        for r in rows
    ]
    write_results("search", {"dim": args.dim, "rows": rows}, lines)


if __name__ == "__main__":
    main()
