"""Markdown table (deltas against each dataset's base plain run) and a PNG bar chart."""

from __future__ import annotations

from pathlib import Path

from eval.metrics import HEADLINE


def _label(r: dict) -> str:
    name = Path(r["model"]).name
    pooled = ", query-pooled" if r.get("pooling") == "query" and r["k"] else ""
    pooled += ", block attention" if r.get("attention") == "block" and r["k"] else ""
    dtype = f" [{r['dtype']}]" if r.get("dtype", "float32") != "float32" else ""
    return f"{name} · {r['run']}" + (f" (k={r['k']}{pooled})" if r["k"] else "") + dtype


def _set(r: dict) -> str:
    """The dataset, and its split where it is not the test split (a dev screening is not a result)."""
    split = r.get("split", "test")
    return r["dataset"] if split == "test" else f"{r['dataset']} ({split})"


def _baseline(records: list[dict], dataset: str) -> dict | None:
    """The untrained model's plain run, else the dataset's first run (per split)."""
    rows = [r for r in records if _set(r) == dataset]
    return next((r for r in rows if r["run"] == "plain" and not r["trained"]), rows[0] if rows else None)


def write_table(records: list[dict], path: Path) -> str:
    cols = HEADLINE
    lines = [
        "| dataset | model · run | pool | " + " | ".join(cols) + " | Δ nDCG@10 | s |",
        "|---|---|---|" + "---|" * len(cols) + "---|---|",
    ]
    for r in records:
        base = _baseline(records, _set(r))
        delta = 100 * (r["metrics"]["ndcg@10"] - base["metrics"]["ndcg@10"])
        secs = r.get("encode_seconds", r.get("search_seconds", 0.0))
        vals = " | ".join(f"{100 * r['metrics'][c]:.2f}" for c in cols)
        lines.append(f"| {_set(r)} | {_label(r)} | {r['pool']} | {vals} | {delta:+.2f} | {secs:.1f} |")
    table = "\n".join(lines)
    path.write_text(
        table
        + "\n\nMetrics ×100; Δ against the base model's plain run; s = seconds to encode the test queries"
        " (in-process) or to search them (url).\n"
    )
    return table


def write_chart(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(_set(r) for r in records))
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(6, 5 * len(datasets)), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        rows = [r for r in records if _set(r) == ds]
        vals = [100 * r["metrics"]["ndcg@10"] for r in rows]
        ax.barh(range(len(rows)), vals, color=["#4C72B0" if r["run"] == "plain" else "#DD8452" for r in rows])
        ax.set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("nDCG@10 (×100)")
        ax.set_title(ds)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(paths: list[Path], out: Path) -> str:
    """One table and chart from several runs' results.json (e.g. base, k=0 and RARe evaluated apart)."""
    import json

    records = [r for p in paths for r in json.loads(Path(p).read_text())]
    order = {"plain": 0, "rare": 1, "random": 2}
    records.sort(key=lambda r: (_set(r), r["trained"], Path(r["model"]).name, order.get(r["run"], 9)))
    out.mkdir(parents=True, exist_ok=True)
    write_chart(records, out / "ndcg10.png")
    return write_table(records, out / "results.md")


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 3:
        sys.exit("usage: python -m eval.report OUT_DIR RESULTS.json [RESULTS.json ...]")
    print(merge([Path(p) for p in sys.argv[2:]], Path(sys.argv[1])))
