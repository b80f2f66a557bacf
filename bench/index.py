"""Indexer throughput vs raw in-process `model.encode` of the same texts, side by side in one run.

    python bench/index.py --beir ../shared/data/beir/scifact --beir ../shared/data/beir/nfcorpus

The indexer path is the whole `rare index` work on a fresh collection (length-sorted token-budget batches,
FAISS add, atomic snapshot); raw is sentence-transformers' `encode` with its default batch size. Runs
alternate (raw, indexer, raw, indexer) and the best of each counts, so machine noise hits both alike.
Target: indexer >= 0.95x raw. Results: bench/results/index[-<dtype>].json and .md (no suffix: float32).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_results  # noqa: E402
from rare.beir_data import load_beir  # noqa: E402
from rare.collection import Collection  # noqa: E402
from rare.indexer import add_to_collection  # noqa: E402
from rare.model import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", action="append", required=True, type=Path)
    ap.add_argument("--limit", type=int, default=2000, help="documents per dataset (0 = all)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--dtype", default="auto", help="number format of both paths, as `rare index --dtype` (RARE_DTYPE)"
    )
    args = ap.parse_args()

    model = load_model(None, args.device, args.dtype)
    model.st.encode(["warm up"] * 8)
    rows = []
    for folder in args.beir:
        ds = load_beir(folder)
        ids = list(ds.corpus)[: args.limit or None]
        docs = [(i, ds.corpus[i]["title"], ds.corpus[i]["text"]) for i in ids]
        texts = [ds.doc_text(i) for i in ids]
        raw, ours = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            model.st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            raw.append(time.perf_counter() - t)
            with tempfile.TemporaryDirectory() as tmp:
                col = Collection.create(Path(tmp), "bench", model)
                t = time.perf_counter()
                add_to_collection(col, docs, show_progress=False)
                ours.append(time.perf_counter() - t)
                assert len(col.docs) == len(docs)
                col.close()
        row = {
            "dataset": ds.name,
            "documents": len(docs),
            "raw_docs_per_s": round(len(docs) / min(raw), 2),
            "indexer_docs_per_s": round(len(docs) / min(ours), 2),
            "raw_seconds": [round(x, 1) for x in raw],
            "indexer_seconds": [round(x, 1) for x in ours],
        }
        row["ratio"] = round(row["indexer_docs_per_s"] / row["raw_docs_per_s"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)

    meta = {
        "machine": machine(),
        "device": model.device,
        "dtype": model.dtype,
        "model": model.name,
        "target_ratio": 0.95,
    }
    stem = "index" if model.dtype == "float32" else f"index-{model.dtype}"
    lines = [
        "| dataset | dtype | docs | raw encode docs/s | indexer docs/s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['dataset']} | {model.dtype} | {r['documents']} | {r['raw_docs_per_s']} | "
        f"{r['indexer_docs_per_s']} | {r['ratio']} |"
        for r in rows
    ]
    write_results(stem, {"meta": meta, "rows": rows}, lines)


if __name__ == "__main__":
    main()
