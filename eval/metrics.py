"""Retrieval metrics through beir's EvaluateRetrieval (pytrec_eval)."""

from __future__ import annotations

import logging

K_VALUES = [1, 3, 5, 10, 100]
HEADLINE = ["ndcg@10", "recall@100", "map@100", "mrr@10"]


def evaluate(qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]]) -> dict[str, float]:
    """nDCG@1/3/5/10/100, Recall@10/100, MAP@100, MRR@10, averaged over the queries in `qrels`."""
    from beir.retrieval.evaluation import EvaluateRetrieval

    logging.getLogger("beir").setLevel(logging.WARNING)
    qrels = {q: d for q, d in qrels.items() if q in results}
    ndcg, _map, recall, _p = EvaluateRetrieval.evaluate(qrels, results, K_VALUES, ignore_identical_ids=True)
    mrr = EvaluateRetrieval.evaluate_custom(qrels, results, [10], metric="mrr")
    out = {}
    for k in K_VALUES:
        out[f"ndcg@{k}"] = ndcg[f"NDCG@{k}"]
    out["recall@10"] = recall["Recall@10"]
    out["recall@100"] = recall["Recall@100"]
    out["map@100"] = _map["MAP@100"]
    out["mrr@10"] = mrr["MRR@10"]
    return {k: round(float(v), 5) for k, v in out.items()}
