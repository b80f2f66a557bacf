"""Training samples: augmented anchors (never using a query as its own example), positives, hard negatives."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rare.beir_data import DataError, iter_jsonl, load_beir
from rare.cache import corpus_embeddings
from rare.encoding import encode_texts
from rare.instructions import instruction_for
from rare.model import LoadedModel
from rare.pool import example_id, pool_from_beir
from rare.prompt import DEFAULT_INSTRUCTION, Example, PromptBuilder
from rare.query import QueryAugmenter
from rare.selection import make_selector
from trainer.config import TrainConfig


@dataclass
class Sample:
    query_id: str
    query: str
    anchor: str
    pool_from: int
    blocks: tuple[int, ...]
    positive: str
    negatives: list[str] = field(default_factory=list)
    example_ids: list[str] = field(default_factory=list)
    weight: float = 1.0


@dataclass
class Source:
    """One training set: its pairs, its example pool and its task instruction."""

    name: str
    instruction: str
    pairs: list[tuple[str, str, str, list[str]]]  # (query id, query, positive text, negatives)
    pool: list[Example]


def _mine(model: LoadedModel, ds, qrels: dict, cfg: TrainConfig) -> dict[str, list[str]]:
    """Hard negatives from the base model: skip the top ranks (likely unjudged positives) and every
    judged document of the query, in any split."""
    if cfg.hard_negatives == 0:
        return {}
    ids, emb = corpus_embeddings(model, ds, cfg.cache_dir, show_progress=cfg.show_progress)
    qids = sorted(qrels)
    qemb = encode_texts(model, [ds.queries[q] for q in qids])
    judged: dict[str, set[str]] = {}
    for split in ("train", "dev", "test"):
        if ds.has_split(split):
            for q, docs in ds.split(split).items():
                judged.setdefault(q, set()).update(docs)
    depth = min(len(ids), cfg.skip_top + cfg.hard_negatives + 64)
    top = np.argsort(-(qemb @ emb.T), axis=1)[:, :depth]
    out = {}
    for qid, row in zip(qids, top, strict=True):
        cands = [ids[i] for i in row[cfg.skip_top :] if ids[i] not in judged.get(qid, ())]
        out[qid] = [ds.doc_text(d) for d in cands[: cfg.hard_negatives]]
    return out


def load_sources(cfg: TrainConfig, base: LoadedModel) -> list[Source]:
    sources = []
    for folder in cfg.beir:
        ds = load_beir(folder)
        if not ds.has_split("train"):
            raise DataError(f"{folder}: no qrels/train.tsv to train on")
        qrels = ds.split("train")
        negs = _mine(base, ds, qrels, cfg)
        pairs = []
        rng = random.Random(cfg.seed)
        for qid in sorted(qrels):
            judged = [(did, score) for did, score in sorted(qrels[qid].items()) if score > 0]
            if cfg.max_pairs_per_query is not None:
                # Highest grade first, ties in seeded random order: a query with dozens of judged
                # documents (NFCorpus) should not fill batches with itself.
                rng.shuffle(judged)
                judged = sorted(judged, key=lambda x: -x[1])[: cfg.max_pairs_per_query]
            for did, _ in judged:
                pairs.append((qid, ds.queries[qid], ds.doc_text(did), negs.get(qid, [])))
        sources.append(Source(ds.name, instruction_for(ds.name), pairs, pool_from_beir(ds, "train")))
    for path in cfg.jsonl:
        pairs, pool = [], []
        for i, obj in enumerate(iter_jsonl(Path(path)), 1):
            q, p = obj.get("query"), obj.get("positive")
            if not isinstance(q, str) or not isinstance(p, str):
                raise DataError(f"{path}: record {i} needs string fields 'query' and 'positive'")
            qid = example_id(q, p)
            negatives = [str(n) for n in obj.get("negatives") or []][: max(cfg.hard_negatives, 0)]
            pairs.append((qid, q, p, negatives))
            pool.append(Example(qid, q, p))
        sources.append(Source(Path(path).stem, DEFAULT_INSTRUCTION, pairs, pool))
    if not any(s.pairs for s in sources):
        raise DataError("no training pairs found")
    return sources


def build_samples(cfg: TrainConfig, base: LoadedModel, sources: list[Source]) -> list[Sample]:
    """Anchors use the core's format and budget (the same code the service runs)."""
    rng = random.Random(cfg.seed)
    aug = QueryAugmenter(
        base,
        example_doc_tokens=cfg.example_doc_tokens,
        max_query_tokens=cfg.max_seq_length,
        always_instruct=True,
        pooling=cfg.pooling,
        attention=cfg.attention,
    )
    doc_cap = PromptBuilder(base.token_counter, cfg.max_seq_length, cfg.doc_tokens).cap_document
    samples = []
    for src in sources:
        selector = (
            make_selector(cfg.selector, src.pool, embed=lambda t: encode_texts(base, t), seed=cfg.seed)
            if cfg.k > 0
            else None
        )
        queries = [q for _, q, _, _ in src.pairs]
        ks = [
            0 if rng.random() < cfg.plain_fraction else (rng.randint(1, cfg.k) if cfg.vary_k else cfg.k)
            for _ in src.pairs
        ]
        chosen = (
            selector.select(
                queries, cfg.k, exclude=[{qid} for qid, _, _, _ in src.pairs], exclude_identical=True
            )
            if selector
            else [[] for _ in queries]
        )
        for (qid, q, pos, negs), k, exs in zip(src.pairs, ks, chosen, strict=True):
            a = aug.build(q, exs[:k], src.instruction)
            samples.append(
                Sample(
                    query_id=qid,
                    query=q,
                    anchor=a.text,
                    pool_from=a.pool_from,
                    blocks=a.blocks,
                    positive=doc_cap(pos),
                    negatives=[doc_cap(n) for n in negs],
                    example_ids=[s.example.id for s in a.examples],
                )
            )
    # Every sample needs the same number of negative columns.
    n_neg = min((len(s.negatives) for s in samples), default=0)
    for s in samples:
        s.negatives = s.negatives[:n_neg]
    return samples


def to_dataset(samples: list[Sample], pooling: str, attention: str = "full"):
    from datasets import Dataset

    from trainer.collator import BLOCKS_COLUMN, POOL_FROM_COLUMN

    cols: dict[str, list] = {"anchor": [s.anchor for s in samples], "positive": [s.positive for s in samples]}
    for j in range(len(samples[0].negatives) if samples else 0):
        cols[f"negative_{j + 1}"] = [s.negatives[j] for s in samples]
    cols["label"] = [float(s.weight) for s in samples]  # per-sample loss weight
    if pooling == "query":
        cols[POOL_FROM_COLUMN] = [s.pool_from for s in samples]
    if attention == "block":
        cols[BLOCKS_COLUMN] = [list(s.blocks) for s in samples]
    return Dataset.from_dict(cols)
