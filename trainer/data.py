"""Training samples: augmented anchors (never using a query as its own example), positives, hard negatives."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rare.beir_data import DataError, iter_jsonl, load_beir, ranked_positives
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
    # Keys of the positive and each negative, and of every document judged relevant to the query: an
    # in-batch candidate relevant to an anchor is not a negative for it (trainer.negatives).
    doc_keys: list[str] = field(default_factory=list)
    relevant: frozenset[str] = frozenset()


@dataclass
class Pair:
    query_id: str
    query: str
    positive: str
    negatives: list[str]
    positive_key: str
    negative_keys: list[str]


@dataclass
class Source:
    """One training set: its pairs, its example pool, its task instruction and, per query id, the keys
    of the documents judged relevant to it."""

    name: str
    instruction: str
    pairs: list[Pair]
    pool: list[Example]
    relevant: dict[str, frozenset[str]]


def _mine(model: LoadedModel, ds, qrels: dict, cfg: TrainConfig) -> dict[str, list[str]]:
    """Hard negative ids from the base model: skip the top ranks (likely unjudged positives) and every
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
        out[qid] = cands[: cfg.hard_negatives]
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
        for qid in sorted(qrels):
            # A query with dozens of judged documents (NFCorpus) should not fill batches with itself:
            # keep its N best, ties in the qrels file's order (NFCorpus lists its closest ones first).
            graded = ranked_positives(qrels[qid])[: cfg.max_pairs_per_query]
            neg_ids = negs.get(qid, [])
            for did in graded:
                pairs.append(
                    Pair(
                        qid,
                        ds.queries[qid],
                        ds.doc_text(did),
                        [ds.doc_text(n) for n in neg_ids],
                        f"{ds.name}/{did}",
                        [f"{ds.name}/{n}" for n in neg_ids],
                    )
                )
        relevant = {
            q: frozenset(f"{ds.name}/{d}" for d, score in docs.items() if score > 0)
            for q, docs in qrels.items()
        }
        sources.append(
            Source(ds.name, instruction_for(ds.name), pairs, pool_from_beir(ds, "train"), relevant)
        )
    for path in cfg.jsonl:
        pairs, pool = [], []
        positives: dict[str, set[str]] = {}  # query text -> its positives' keys (texts are the keys)
        for i, obj in enumerate(iter_jsonl(Path(path)), 1):
            q, p = obj.get("query"), obj.get("positive")
            if not isinstance(q, str) or not isinstance(p, str):
                raise DataError(f"{path}: record {i} needs string fields 'query' and 'positive'")
            qid = example_id(q, p)
            negatives = [str(n) for n in obj.get("negatives") or []][: max(cfg.hard_negatives, 0)]
            pairs.append(Pair(qid, q, p, negatives, p, negatives))
            pool.append(Example(qid, q, p))
            positives.setdefault(q, set()).add(p)
        relevant = {pair.query_id: frozenset(positives[pair.query]) for pair in pairs}
        sources.append(Source(Path(path).stem, DEFAULT_INSTRUCTION, pairs, pool, relevant))
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
        queries = [p.query for p in src.pairs]
        ks = [
            0 if rng.random() < cfg.plain_fraction else (rng.randint(1, cfg.k) if cfg.vary_k else cfg.k)
            for _ in src.pairs
        ]
        exclude = [{p.query_id} for p in src.pairs]
        chosen = (
            selector.select(queries, cfg.k, exclude=exclude, exclude_identical=True)
            if selector
            else [[] for _ in queries]
        )
        if selector and cfg.random_example_fraction > 0:
            # Unrelated demonstrations, so the model learns to lean on examples only when they match the
            # query (out of domain, the nearest pool queries' documents rarely answer it). Own stream: the
            # plain/k draws above stay as they were.
            noise = make_selector("random", src.pool, seed=cfg.seed).select(
                queries, cfg.k, exclude=exclude, exclude_identical=True
            )
            pick = random.Random(f"{cfg.seed}:random-examples")
            chosen = [
                r if pick.random() < cfg.random_example_fraction else c
                for c, r in zip(chosen, noise, strict=True)
            ]
        for p, k, exs in zip(src.pairs, ks, chosen, strict=True):
            a = aug.build(p.query, exs[:k], src.instruction)
            samples.append(
                Sample(
                    query_id=p.query_id,
                    query=p.query,
                    anchor=a.text,
                    pool_from=a.pool_from,
                    blocks=a.blocks,
                    positive=doc_cap(p.positive),
                    negatives=[doc_cap(n) for n in p.negatives],
                    example_ids=[s.example.id for s in a.examples],
                    doc_keys=[p.positive_key, *p.negative_keys],
                    relevant=src.relevant[p.query_id],
                )
            )
    # Every sample needs the same number of negative columns.
    n_neg = min((len(s.negatives) for s in samples), default=0)
    for s in samples:
        s.negatives = s.negatives[:n_neg]
        s.doc_keys = s.doc_keys[: n_neg + 1]
    return samples


def to_dataset(samples: list[Sample], pooling: str, attention: str = "full"):
    from datasets import Dataset

    from trainer.collator import BLOCKS_COLUMN, DOC_KEYS_COLUMN, POOL_FROM_COLUMN, RELEVANT_COLUMN

    cols: dict[str, list] = {"anchor": [s.anchor for s in samples], "positive": [s.positive for s in samples]}
    for j in range(len(samples[0].negatives) if samples else 0):
        cols[f"negative_{j + 1}"] = [s.negatives[j] for s in samples]
    cols["label"] = [float(s.weight) for s in samples]  # per-sample loss weight
    if pooling == "query":
        cols[POOL_FROM_COLUMN] = [s.pool_from for s in samples]
    if attention == "block":
        cols[BLOCKS_COLUMN] = [list(s.blocks) for s in samples]
    keys = key_ids(samples)
    cols[DOC_KEYS_COLUMN] = [[keys[k] for k in s.doc_keys] for s in samples]
    cols[RELEVANT_COLUMN] = [sorted(keys[k] for k in s.relevant if k in keys) for s in samples]
    return Dataset.from_dict(cols)


def key_ids(samples: list[Sample]) -> dict[str, int]:
    """A small integer per document key that can appear in a batch (relevant documents that are never a
    positive or a negative cannot collide with a candidate, so they need none)."""
    keys: dict[str, int] = {}
    for s in samples:
        for k in s.doc_keys:
            keys.setdefault(k, len(keys))
    return keys
