"""float32 against bfloat16, in-process and side by side in one run: encode speed and retrieval quality.

    python bench/dtype.py --beir ../shared/data/beir/scifact
    python bench/dtype.py --beir ../shared/data/beir/scifact --model var/models/scifact-k3-qb-p50-fo

Per number format: the corpus encode rate (the indexer's path: token-budget batches on every core), the
query encode rate at serving batch sizes on one torch thread (what each encode worker of the server runs:
its packed path, the queries as the server builds them with no examples), nDCG@10 of exact search over
the test split (corpus and queries both in that format), and how far bfloat16's vectors are from
float32's. The query rates alternate between the formats batch size by batch size, since this
machine's speed drifts within minutes. bfloat16 pays on a CPU with native bf16 instructions (AMX or
AVX512-BF16), where `--dtype auto` picks it (rare.model.cpu_bf16_unit); elsewhere it is emulated and
slower than float32. BENCH_OUT=DIR writes the results there instead (another kind of machine).
Results: bench/results/dtype-<dataset>[-<model>].json and .md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, machine_line, write_results  # noqa: E402
from rare.encoding import encode_batch  # noqa: E402
from rare.prompt import encode_columns  # noqa: E402

FORMATS = ("float32", "bfloat16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--model", help="model directory (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--batch-sizes", default="1,8,32", help="serving batch sizes to time queries at")
    ap.add_argument("--queries", type=int, default=256, help="queries per timed pass")
    args = ap.parse_args()

    import torch

    from eval.metrics import evaluate
    from eval.runner import search
    from rare.beir_data import load_beir
    from rare.encoding import encode_texts
    from rare.model import load_model
    from rare.query import QueryAugmenter

    ds = load_beir(args.beir, ["test"])
    ids = list(ds.corpus)
    docs = [ds.doc_text(i) for i in ids]
    test = sorted(ds.split("test"))
    models = {dt: load_model(args.model, "cpu", dt, cache=False) for dt in FORMATS}
    built = {dt: [QueryAugmenter(m).build(ds.queries[q], []) for q in test] for dt, m in models.items()}

    corpus, queries, rows = {}, {}, {}
    for dt, m in models.items():
        t = time.perf_counter()
        corpus[dt] = encode_texts(m, docs, show_progress=True, desc=f"{ds.name} corpus, {dt}")
        wall = time.perf_counter() - t
        aug = built[dt]
        texts, _, pool_from, blocks = encode_columns(aug)
        queries[dt] = m.encode(texts, pool_from, blocks)
        rows[dt] = {"dtype": dt, "corpus_docs_per_s": round(len(docs) / wall, 1)}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for bs in (int(x) for x in args.batch_sizes.split(",")):
        for dt, m in models.items():
            aug = built[dt][: args.queries]
            _serve(m, aug[: bs * 2], bs)  # warm-up
            t = time.perf_counter()
            _serve(m, aug, bs)
            rows[dt][f"queries_per_s_batch_{bs}"] = round(len(aug) / (time.perf_counter() - t), 1)
    torch.set_num_threads(threads)

    hits = {}  # per format, each query's top 100 best first (eval's exact search)
    for dt in FORMATS:
        hits[dt] = search(corpus[dt], ids, queries[dt], 100)
        results = dict(zip(test, hits[dt], strict=True))
        rows[dt]["ndcg@10"] = round(100 * evaluate(ds.split("test"), results)["ndcg@10"], 2)
    cos = np.sum(corpus["float32"] * corpus["bfloat16"], axis=1)
    overlap = np.mean(
        [len(set(list(a)[:10]) & set(list(b)[:10])) / 10 for a, b in zip(*hits.values(), strict=True)]
    )
    agreement = {
        "document_cosine_mean": round(float(cos.mean()), 5),
        "document_cosine_min": round(float(cos.min()), 5),
        "top10_overlap": round(float(overlap), 3),
    }

    name = models["float32"].name
    result = {
        "dataset": ds.name,
        "model": name,
        "machine": machine(),
        "torch_threads_corpus": threads,
        "rows": list(rows.values()),
        "agreement": agreement,
    }
    stem = f"dtype-{ds.name}" + (f"-{Path(args.model).name}" if args.model else "")
    sizes = [k for k in rows["float32"] if k.startswith("queries_per_s")]
    lines = [
        f"{name} on {ds.name} ({len(docs)} documents, {len(test)} test queries), in-process. "
        f"{machine_line(result['machine'])} Corpus: {threads} torch threads; queries: 1 thread (an encode "
        "worker), batches of the sizes shown.",
        "",
        "| dtype | corpus docs/s | "
        + " | ".join(f"queries/s, batch {k.rsplit('_', 1)[1]}" for k in sizes)
        + " | nDCG@10 |",
        "|---|---|" + "---|" * len(sizes) + "---|",
    ]
    lines += [
        f"| {r['dtype']} | {r['corpus_docs_per_s']} | "
        + " | ".join(str(r[k]) for k in sizes)
        + f" | {r['ndcg@10']} |"
        for r in rows.values()
    ]
    f, b = rows["float32"], rows["bfloat16"]
    lines += [
        "| bfloat16 / float32 | "
        + f"{b['corpus_docs_per_s'] / f['corpus_docs_per_s']:.2f}x | "
        + " | ".join(f"{b[k] / f[k]:.2f}x" for k in sizes)
        + f" | {b['ndcg@10'] - f['ndcg@10']:+.2f} |",
        "",
        f"bfloat16 against float32: document cosine mean {agreement['document_cosine_mean']}, min "
        f"{agreement['document_cosine_min']}; of each query's top 10, "
        f"{100 * agreement['top10_overlap']:.1f}% the same documents.",
    ]
    write_results(stem, result, lines)


def _serve(model, augs: list, batch_size: int) -> None:
    """Arrival-order batches through the server's encode call (packed where the model allows)."""
    for start in range(0, len(augs), batch_size):
        part = augs[start : start + batch_size]
        encode_batch(model, *encode_columns(part))


if __name__ == "__main__":
    main()
