"""Example pools for test queries: the train split, else dev, else a leak-free k-fold over test queries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rare.beir_data import BeirDataset
from rare.pool import pool_from_beir
from rare.prompt import Example

FOLDS = 5


@dataclass
class EvalPool:
    source: str  # "train", "dev" or "kfold-test"
    examples_for: dict[str, list[Example]]  # test query id -> the pool it may draw from
    groups: list[tuple[list[str], list[Example]]]  # (query ids, their shared pool)


def fold_of(qid: str, folds: int = FOLDS) -> int:
    return int.from_bytes(hashlib.blake2b(qid.encode(), digest_size=4).digest(), "little") % folds


def eval_pool(ds: BeirDataset, split: str, qids: list[str]) -> EvalPool:
    for src in ("train", "dev"):
        if src != split and ds.has_split(src):
            pool = pool_from_beir(ds, src)
            return EvalPool(src, {q: pool for q in qids}, [(qids, pool)])
    # No separate split: a query's examples come only from the other folds, never its own judgments.
    test_pool = pool_from_beir(ds, split)
    groups = []
    for f in range(FOLDS):
        members = [q for q in qids if fold_of(q) == f]
        if members:
            groups.append((members, [e for e in test_pool if fold_of(e.id) != f]))
    return EvalPool("kfold-" + split, {q: p for members, p in groups for q in members}, groups)
