"""Test-time ensembles of a RARe model's query embeddings: can more use of the same examples lift it?

    python bench/ensemble.py --beir ../shared/data/beir/nfcorpus --model var/models/nfcorpus-fo-rx50

No training: one model's query embeddings, each L2-normalised, combined before exact search. `A<k>`:
the query with its k nearest examples (as `rare eval` builds it; `A<trained k>` is `rare eval --runs
rare`); `P`: the plain query (`--runs plain`); `S<i>`: the query with its i-th nearest example alone
(plain where it has fewer); `docs<m>`: the mean of the corpus embeddings of the m nearest examples'
documents (as bench/example_signal.py, which probes the base model). Examples from the pool `rare eval`
uses (the train split), through the model's selector. Reported on each split asked (dev to pick a
variant, test to read it). Results: bench/results/ensemble-<model>-<dataset>.json and .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, write_results  # noqa: E402
from eval.metrics import evaluate  # noqa: E402
from eval.pools import eval_pool  # noqa: E402
from eval.runner import TOP_K, augment_queries, search  # noqa: E402
from rare.beir_data import load_beir  # noqa: E402
from rare.cache import corpus_embeddings  # noqa: E402
from rare.encoding import encode_texts  # noqa: E402
from rare.instructions import instruction_for  # noqa: E402
from rare.model import load_model  # noqa: E402
from rare.prompt import encode_columns  # noqa: E402
from rare.query import QueryAugmenter  # noqa: E402

WEIGHTS = (0.25, 0.5, 1.0)


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def variants(
    model, ds, split: str, max_k: int, doc_row: dict[str, int], corpus: np.ndarray
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The split's query ids and every embedding combination's query matrix (rows in their order), by name."""
    qids = sorted(ds.split(split))
    pool = eval_pool(ds, split, qids)
    aug = QueryAugmenter(model)
    instruction = instruction_for(ds.name)
    full = augment_queries(model, ds, qids, pool, "rare", max_k, aug)  # the max_k nearest examples

    def encode(augs) -> np.ndarray:
        texts, _, pool_from, blocks = encode_columns(augs)
        return normalised(encode_texts(model, texts, pool_from=pool_from, blocks=blocks))

    def rebuild(pick) -> list:
        """Each query again with `pick` of the examples it kept within its budget, most similar first."""
        texts = [ds.queries[q] for q in qids]
        return [aug.build(t, pick(a.examples), instruction) for t, a in zip(texts, full, strict=True)]

    e = {"P": encode(rebuild(lambda ex: []))}
    for k in range(1, max_k + 1):
        e[f"A{k}"] = encode(rebuild(lambda ex, k=k: ex[:k]))
    for i in range(max_k):
        e[f"S{i + 1}"] = encode(rebuild(lambda ex, i=i: ex[i : i + 1]))
    pool_doc = {x.id: x.document for _, pool_examples in pool.groups for x in pool_examples}  # uncut
    docs = {}
    for m in (1, 3, max_k):
        rows = [[doc_row[pool_doc[x.example.id]] for x in a.examples[:m]] for a in full]
        docs[m] = np.stack([corpus[r].mean(0) if r else np.zeros(corpus.shape[1]) for r in rows])

    t = model.rare.k or 3
    out = dict(e)
    out[f"mean A1..A{t}"] = sum(e[f"A{k}"] for k in range(1, t + 1))
    out[f"mean A1..A{max_k}"] = sum(e[f"A{k}"] for k in range(1, max_k + 1))
    for m in (2, 3, max_k):
        singles = sum(e[f"S{i}"] for i in range(1, m + 1)) / m
        out[f"mean S1..S{m}"] = singles
        out[f"mean S1..S{m} + A{t}"] = singles + e[f"A{t}"]
    for w in WEIGHTS:
        for base in (f"A{t}", "A1"):
            out[f"{base} + {w} P"] = e[base] + w * e["P"]
        for base in ("P", f"A{t}", "A1"):
            for m, d in docs.items():
                out[f"{base} + {w} docs{m}"] = e[base] + w * d
    return qids, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--splits", default="dev,test")
    ap.add_argument("--max-k", type=int, default=5)
    ap.add_argument("--dtype", default="float32", help="as rare eval --dtype; the README figures are float32")
    args = ap.parse_args()

    splits = args.splits.split(",")
    ds = load_beir(args.beir, ["train", *splits])
    model = load_model(args.model, "cpu", args.dtype)
    ids, corpus = corpus_embeddings(model, ds, ROOT / "var" / "cache", show_progress=False)
    doc_row = {ds.doc_text(d): i for i, d in enumerate(ids)}
    table: dict[str, dict[str, float]] = {}
    for split in splits:
        qids, combos = variants(model, ds, split, args.max_k, doc_row, corpus)
        qrels = ds.split(split)
        for name, q in combos.items():
            hits = search(corpus, ids, normalised(q), TOP_K)
            ndcg = evaluate(qrels, dict(zip(qids, hits, strict=True)))["ndcg@10"]
            table.setdefault(name, {})[split] = round(100 * ndcg, 2)
            print(name, split, table[name][split], flush=True)

    stem = f"ensemble-{Path(args.model).name}-{ds.name}"
    lines = [
        f"{model.name} (trained k {model.rare.k}, {model.dtype}) on {ds.name}: query-embedding combinations, "
        "each part L2-normalised (see bench/ensemble.py). nDCG@10 x100.",
        "",
        "| combination | " + " | ".join(splits) + " |",
        "|---|" + "---|" * len(splits),
    ] + [f"| {name} | " + " | ".join(str(v.get(s, "-")) for s in splits) + " |" for name, v in table.items()]
    write_results(stem, {"model": args.model, "ndcg@10": table}, lines)


if __name__ == "__main__":
    main()
