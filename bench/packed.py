"""CPU cost of the encode workers' serving batches: attention per group of similar rows vs one group.

    python bench/packed.py --beir ../shared/data/beir/scifact [--model DIR]

An encode worker runs each serving batch packed (rare.encoding.encode_batch): the dense layers see the
batch's real tokens; attention is padded, either over the whole batch (one group, before) or per group
of rows of similar size (rare.block_attention.attention_groups). This measures the CPU milliseconds a
query of the SciFact test queries costs on one torch thread (an encode worker's setting), plain and with
k BM25 examples from the train split, in arrival-order batches of 16 and 32 (what the server forms
under load) and length-sorted batches of 32 (the raw reference of bench/service.py), both ways,
alternating, `--repeats` rounds (median). Block-attention models run with their example caches warm.
Results: bench/results/packed[-<model>].json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402

LAYOUTS = {"arrival 16": (16, False), "arrival 32": (32, False), "sorted 32": (32, True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--model", help="model directory (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    import rare.block_attention as ba
    from rare.beir_data import load_beir
    from rare.encoding import encode_batch
    from rare.model import load_model
    from rare.pool import pool_from_beir
    from rare.prompt import encode_columns
    from rare.query import QueryAugmenter
    from rare.selection import make_selector

    torch.set_num_threads(1)  # an encode worker's thread count on these 2 cores
    model = load_model(args.model, "cpu")
    if model.rare.attention == "block":
        model.block_encoder.cache_bytes = 4 << 30  # every example stays cached, as in a warm worker
    ds = load_beir(args.beir, ["train", "test"])
    queries = [ds.queries[q] for q in sorted(ds.split("test"))]
    chosen = make_selector("bm25", pool_from_beir(ds, "train")).select(queries, args.k)
    aug = QueryAugmenter(model)
    grouped = ba.attention_groups

    def one_group(q, keys):
        return [np.arange(len(keys))]

    rows = []
    for kind, examples in (("plain", [[] for _ in queries]), (f"{args.k} examples", chosen)):
        built = [aug.build(q, ex, model.rare.instruction) for q, ex in zip(queries, examples, strict=True)]

        def cpu_ms(size: int, by_length: bool, built=built) -> float:
            order = list(range(len(built)))
            if by_length:
                order.sort(key=lambda i: -built[i].tokens)
            t = time.process_time()
            for s in range(0, len(order), size):
                part = [built[i] for i in order[s : s + size]]
                encode_batch(model, *encode_columns(part))
            return 1000 * (time.process_time() - t) / len(order)

        cpu_ms(32, False)  # warm: caches filled, allocator settled
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for how, fn in (("one group", one_group), ("grouped", grouped)):
                ba.attention_groups = fn
                for layout, (size, by_length) in LAYOUTS.items():
                    times.setdefault((how, layout), []).append(cpu_ms(size, by_length))
        ba.attention_groups = grouped
        mean_tokens = round(statistics.mean(a.tokens for a in built), 1)
        for layout in LAYOUTS:
            before = statistics.median(times[("one group", layout)])
            after = statistics.median(times[("grouped", layout)])
            rows.append(
                {
                    "queries": kind,
                    "mean_tokens": mean_tokens,
                    "batches": layout,
                    "one_group_ms": round(before, 2),
                    "grouped_ms": round(after, 2),
                    "grouped_vs_one": round(after / before, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    def vs_sorted(kind: str, how: str) -> str:
        by = {r["batches"]: r[how] for r in rows if r["queries"] == kind}
        return f"{by['arrival 16'] / by['sorted 32']:.3f} / {by['arrival 32'] / by['sorted 32']:.3f}"

    stem = "packed" if not args.model else f"packed-{Path(args.model).name}"
    result = {"model": model.name, "attention": model.rare.attention, "k": args.k, "rows": rows}
    lines = [
        f"Model {model.name} (attention {model.rare.attention}, pooling {model.rare.pooling}), one torch "
        f"thread, {len(queries)} SciFact test queries, CPU ms per query (median of {args.repeats}).",
        "",
        "| queries | mean tokens | batches | one attention group | grouped | grouped / one |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['queries']} | {r['mean_tokens']} | {r['batches']} | {r['one_group_ms']} | {r['grouped_ms']} "
        f"| {r['grouped_vs_one']} |"
        for r in rows
    ]
    kinds = list(dict.fromkeys(r["queries"] for r in rows))
    lines += ["", "Arrival-order batches of 16 / 32 against length-sorted batches of 32:", ""]
    lines += [
        f"- {kind}: one group {vs_sorted(kind, 'one_group_ms')}, grouped {vs_sorted(kind, 'grouped_ms')}"
        for kind in kinds
    ]
    write_results(stem, result, lines)


if __name__ == "__main__":
    main()
