"""`rare eval`: base vs fine-tuned vs RARe on BEIR folders, in-process or against a running service."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from eval.metrics import evaluate
from eval.pools import EvalPool, eval_pool
from eval.report import write_chart, write_table
from rare.beir_data import BeirDataset, load_beir
from rare.block_attention import Attention
from rare.cache import corpus_embeddings
from rare.encoding import DEFAULT_BATCH_TOKENS, encode_texts
from rare.instructions import instruction_for
from rare.model import LoadedModel, load_model
from rare.pooling import Pooling
from rare.prompt import AugmentedQuery, encode_columns
from rare.query import QueryAugmenter
from rare.selection import make_selector

RUNS = ("plain", "rare", "random")
TOP_K = 1000
NAIVE_K = 5  # the paper's k, used for a model that carries no RARe settings of its own


@dataclass
class EvalConfig:
    beir: list[Path]
    models: list[str | None] = field(default_factory=lambda: [None])
    num_examples: int | None = None
    runs: list[str] = field(default_factory=lambda: list(RUNS))
    split: str = "test"
    url: str | None = None
    collection: str | None = None
    api_key: str | None = None
    out: Path = Path("var/eval")
    data_dir: Path = Path("var")
    device: str = "auto"
    dtype: str = "float32"  # as load_model; the CLI passes the settings' (auto by default)
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_queries: int | None = None
    pooling: Pooling | None = None  # None: each model's own
    attention: Attention | None = None  # None: each model's own
    show_progress: bool = True


def run_k(model: LoadedModel, run: str, override: int | None) -> int:
    if run == "plain":
        return 0
    if override is not None:
        return override
    return model.rare.k if model.rare.k > 0 else NAIVE_K


def augment_queries(
    model: LoadedModel,
    ds: BeirDataset,
    qids: list[str],
    pool: EvalPool,
    run: str,
    k: int,
    aug: QueryAugmenter,
) -> list[AugmentedQuery]:
    instruction = instruction_for(ds.name)
    out: dict[str, AugmentedQuery] = {}
    for members, examples in pool.groups:
        texts = [ds.queries[q] for q in members]
        if k > 0 and examples:
            selector = make_selector(
                "random" if run == "random" else model.rare.selector,
                examples,
                embed=lambda t: encode_texts(model, t),
            )
            chosen = selector.select(texts, k)
        else:
            chosen = [[] for _ in members]
        for q, text, exs in zip(members, texts, chosen, strict=True):
            out[q] = aug.build(text, exs, instruction)
    return [out[q] for q in qids]


def search(corpus_emb: np.ndarray, doc_ids: list[str], qemb: np.ndarray, k: int) -> list[dict[str, float]]:
    from rare.faiss_index import flat_ip

    index = flat_ip(corpus_emb)
    scores, idx = index.search(np.ascontiguousarray(qemb, dtype=np.float32), min(k, len(doc_ids)))
    return [
        {doc_ids[i]: float(s) for s, i in zip(rs, ri, strict=True) if i >= 0}
        for rs, ri in zip(scores, idx, strict=True)
    ]


def eval_in_process(
    cfg: EvalConfig, ds: BeirDataset, qids: list[str], pool: EvalPool, model_name
) -> list[dict]:
    model = load_model(model_name, cfg.device, cfg.dtype)
    doc_ids, corpus_emb = corpus_embeddings(
        model, ds, cfg.data_dir / "cache", batch_tokens=cfg.batch_tokens, show_progress=cfg.show_progress
    )
    qrels = ds.split(cfg.split)
    augmenter = QueryAugmenter(model, pooling=cfg.pooling, attention=cfg.attention)
    records = []
    for run in tqdm(cfg.runs, desc=f"{ds.name} / {model.name}", disable=not cfg.show_progress):
        k = run_k(model, run, cfg.num_examples)
        aug = augment_queries(model, ds, qids, pool, run, k, augmenter)
        t = time.perf_counter()
        texts, _, pool_from, blocks = encode_columns(aug)
        qemb = encode_texts(model, texts, batch_tokens=cfg.batch_tokens, pool_from=pool_from, blocks=blocks)
        encode_s = time.perf_counter() - t
        hits = search(corpus_emb, doc_ids, qemb, TOP_K)
        results = dict(zip(qids, hits, strict=True))
        records.append(
            _record(
                cfg,
                ds,
                model.name,
                model.rare.trained,
                run,
                k,
                pool,
                aug,
                qrels,
                results,
                encode_s,
                pooling=augmenter.pooling,
                attention=augmenter.attention,
                dtype=model.dtype,
            )
        )
    return records


class ServiceError(RuntimeError):
    """The service at --url could not be reached, or refused a request."""


def _call(client, method: str, path: str, **kw) -> dict:
    """One request to the service; a transport error or a non-2xx answer is a ServiceError that says
    what the server said (its `detail`), not a traceback."""
    import httpx

    try:
        r = client.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise ServiceError(f"cannot reach the service at {client.base_url}: {exc}") from exc
    if r.is_success:
        return r.json()
    try:
        detail = r.json().get("detail", r.text)
    except ValueError:
        detail = r.text
    raise ServiceError(f"{method} {client.base_url.join(path)}: HTTP {r.status_code}: {detail}")


def eval_url(cfg: EvalConfig, ds: BeirDataset, qids: list[str], pool: EvalPool) -> list[dict]:
    """Through the REST API: the collection must hold this dataset's corpus and pool."""
    import httpx

    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    collection = cfg.collection or ds.name
    qrels = ds.split(cfg.split)
    records = []
    with httpx.Client(base_url=cfg.url, headers=headers, timeout=600) as client:
        info = _call(client, "GET", "/info")
        rare = info["model"]["rare"]
        for run in cfg.runs:
            if run == "random":
                continue  # the service selects by its collection's selector; no random ablation there
            k = (
                0
                if run == "plain"
                else (cfg.num_examples if cfg.num_examples is not None else (rare["k"] or NAIVE_K))
            )
            results, augs, t = {}, [], time.perf_counter()
            for start in range(0, len(qids), 64):
                chunk = qids[start : start + 64]
                body = {
                    "queries": [
                        {"query": ds.queries[q], "collection": collection, "top_k": TOP_K, "num_examples": k}
                        for q in chunk
                    ]
                }
                answer = _call(client, "POST", "/search/batch", json=body)
                for q, resp in zip(chunk, answer["responses"], strict=True):
                    results[q] = {h["id"]: h["score"] for h in resp["results"]}
                    augs.append(AugmentedQuery("", [None] * resp["num_examples"], resp["query_tokens"]))
            elapsed = time.perf_counter() - t
            records.append(
                _record(
                    cfg,
                    ds,
                    info["model"]["name"],
                    rare["trained"],
                    run,
                    k,
                    pool,
                    augs,
                    qrels,
                    results,
                    elapsed,
                    mode="url",
                    pooling=info["rare"].get("pooling"),
                    attention=info["rare"].get("attention"),
                    dtype=info["model"].get("dtype", "float32"),
                )
            )
    return records


def _record(
    cfg,
    ds,
    model_name,
    trained,
    run,
    k,
    pool,
    aug,
    qrels,
    results,
    seconds,
    mode="in-process",
    pooling=None,
    attention=None,
    dtype="float32",
) -> dict:
    return {
        "dataset": ds.name,
        "split": cfg.split,
        "model": model_name,
        "trained": trained,
        "run": run,
        "k": k,
        "pool": pool.source,
        "mode": mode,
        "pooling": pooling,
        "attention": attention or "full",
        "dtype": dtype,
        "queries": len(results),
        "mean_examples": round(float(np.mean([len(a.examples) for a in aug])) if aug else 0.0, 3),
        "mean_query_tokens": round(float(np.mean([a.tokens for a in aug])) if aug else 0.0, 1),
        ("encode_seconds" if mode == "in-process" else "search_seconds"): round(seconds, 3),
        "metrics": evaluate(qrels, results),
    }


def run_eval(cfg: EvalConfig) -> str:
    bad = [r for r in cfg.runs if r not in RUNS]
    if bad:
        raise ValueError(f"unknown run(s) {bad}; choose from {', '.join(RUNS)}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    records = []
    for folder in cfg.beir:
        ds = load_beir(folder, [cfg.split])
        qids = sorted(ds.split(cfg.split))[: cfg.max_queries]
        pool = eval_pool(ds, cfg.split, qids)
        if cfg.url:
            records += eval_url(cfg, ds, qids, pool)
        else:
            for m in cfg.models:
                records += eval_in_process(cfg, ds, qids, pool, m)
    for r in records:
        name = f"{r['dataset']}-{Path(r['model']).name}-{r['run']}-k{r['k']}-{r['mode']}.json"
        (cfg.out / name).write_text(json.dumps(r, indent=2) + "\n")
    table = write_table(records, cfg.out / "results.md")
    write_chart(records, cfg.out / "ndcg10.png")
    (cfg.out / "results.json").write_text(json.dumps(records, indent=2) + "\n")
    return table
