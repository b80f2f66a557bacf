"""How much a dataset's train split can tell a test query through its nearest training queries' documents.

    python bench/example_signal.py --beir ../shared/data/beir/nfcorpus

No model change: the base model's query embedding plus `weight` x the base model's embedding of the
documents judged for the k nearest training queries (BM25 over the train queries, as the example pool
is searched), then exact search. The documents: the one per training query the example pool keeps
(rare.pool: the first listed in the qrels file), the one with the lowest id (the pool's rule before), the
best of its judged documents for that query (by the base model), or the mean of all of them; from the
nearest query only, or the mean over the k. An upper-bound probe of the examples'
information, not a retrieval method. Results: bench/results/example_signal-<dataset>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, write_results  # noqa: E402
from eval.metrics import evaluate  # noqa: E402
from rare.beir_data import load_beir  # noqa: E402
from rare.cache import corpus_embeddings  # noqa: E402
from rare.encoding import encode_texts  # noqa: E402
from rare.model import load_model  # noqa: E402
from rare.pool import pool_from_beir  # noqa: E402
from rare.selection import make_selector  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--weights", default="0.25,0.5,1.0")
    args = ap.parse_args()

    ds = load_beir(args.beir, ["train", "test"])
    model = load_model(None, "cpu")
    ids, docs = corpus_embeddings(model, ds, ROOT / "var" / "cache", show_progress=False)
    row = {d: i for i, d in enumerate(ids)}
    test = sorted(ds.split("test"))
    queries = encode_texts(model, [ds.queries[q] for q in test])
    pool = pool_from_beir(ds, "train")
    chosen = make_selector("bm25", pool).select([ds.queries[q] for q in test], args.k)
    train = ds.split("train")
    pool_queries = encode_texts(model, [e.query for e in pool])
    at = {e.id: i for i, e in enumerate(pool)}
    kept = {e.id: e.document for e in pool}

    def doc_vector(qid: str, mode: str) -> np.ndarray:
        judged = [d for d, g in train[qid].items() if g > 0 and d in row]
        vecs = docs[[row[d] for d in judged]]
        if mode == "pool":  # the document the example pool keeps: the first listed of the best grade
            return vecs[[ds.doc_text(d) for d in judged].index(kept[qid])]
        if mode == "lowest id":  # the pool's rule before it kept the qrels file's order
            return vecs[judged.index(min(judged))]
        if mode == "best":
            return vecs[int(np.argmax(vecs @ pool_queries[at[qid]]))]
        return vecs.mean(0)

    def ndcg(q: np.ndarray) -> float:
        scores = q @ docs.T
        results = {}
        for i, qid in enumerate(test):
            top = np.argpartition(-scores[i], 100)[:100]
            results[qid] = {ids[j]: float(scores[i, j]) for j in top}
        return round(100 * evaluate(ds.split("test"), results)["ndcg@10"], 2)

    order = file_order_evidence(ds, docs, row, pool, pool_queries)
    print(json.dumps(order), flush=True)

    rows = [{"documents": "-", "examples": 0, "weight": 0.0, "ndcg@10": ndcg(queries)}]
    zero = np.zeros(docs.shape[1], dtype=np.float32)
    for mode in ("pool", "lowest id", "best", "mean"):
        for span in ("nearest", "mean of k"):
            extra = np.stack(
                [
                    (
                        np.mean([doc_vector(s.example.id, mode) for s in c], 0)
                        if span == "mean of k"
                        else doc_vector(c[0].example.id, mode)
                    )
                    if c
                    else zero
                    for c in chosen
                ]
            )
            for w in (float(x) for x in args.weights.split(",")):
                rows.append(
                    {
                        "documents": f"{mode}, {span}",
                        "examples": 1 if span == "nearest" else args.k,
                        "weight": w,
                        "ndcg@10": ndcg(queries + w * extra),
                    }
                )
            print(json.dumps(rows[-1]), flush=True)
    name = f"example_signal-{ds.name}"
    lines = [
        f"Base all-MiniLM-L6-v2 on {ds.name} test ({len(test)} queries): query embedding + weight x judged "
        f"documents of the nearest training queries (BM25, k={args.k}). nDCG@10 x100.",
        "",
        "| documents | weight | nDCG@10 |",
        "|---|---|---|",
    ] + [f"| {r['documents']} | {r['weight']} | {r['ndcg@10']} |" for r in rows]
    lines += [
        "",
        "Does the qrels file's order carry relevance (rare.beir_data.ranked_positives keeps it for ties)? "
        f"Queries whose judged documents are listed best grade first: {order['graded_in_order']}. "
        "The base model's rank (of the whole corpus) of a training query's judged documents, by their "
        "place in the query's list:",
        "",
        "| place in list | documents | median rank | mean cosine |",
        "|---|---|---|---|",
    ]
    for b in order["train"]:
        lines.append(f"| {b['place']} | {b['documents']} | {b['median_rank']} | {b['mean_cosine']} |")
    write_results(name, {"order": order, "rows": rows}, lines)


def file_order_evidence(ds, docs: np.ndarray, row: dict, pool, pool_queries: np.ndarray) -> dict:
    """Where BEIR flattens a split's grades (NFCorpus train: all 1), is a query's list still ordered?
    Graded splits show whether lists run best grade first; the train split, how close the base model
    puts a judged document by its place in the list."""
    graded = {}
    for split in ("dev", "test"):
        if ds.has_split(split):
            lists = [list(d.values()) for d in ds.split(split).values()]
            graded[split] = f"{sum(g == sorted(g, reverse=True) for g in lists)}/{len(lists)} ({split})"
    places = [(0, 1), (1, 2), (2, 3), (3, 10), (10, 20), (20, None)]
    ranks: list[list[int]] = [[] for _ in places]
    sims: list[list[float]] = [[] for _ in places]
    train = ds.split("train")
    for e, q in zip(pool, pool_queries, strict=True):
        s = docs @ q
        rank = np.empty(len(s), dtype=np.int64)
        rank[np.argsort(-s)] = np.arange(len(s))
        for i, d in enumerate(d for d, g in train[e.id].items() if g > 0 and d in row):
            b = next(j for j, (lo, hi) in enumerate(places) if i >= lo and (hi is None or i < hi))
            ranks[b].append(int(rank[row[d]]))
            sims[b].append(float(s[row[d]]))
    return {
        "graded_in_order": ", ".join(graded.values()) or "no graded split",
        "corpus": len(row),
        "train": [
            {
                "place": f"{lo + 1}" if hi == lo + 1 else (f"{lo + 1}-{hi}" if hi else f"{lo + 1}+"),
                "documents": len(r),
                "median_rank": int(np.median(r)) if r else None,
                "mean_cosine": round(float(np.mean(c)), 3) if c else None,
            }
            for (lo, hi), r, c in zip(places, ranks, sims, strict=True)
        ],
    }


if __name__ == "__main__":
    main()
