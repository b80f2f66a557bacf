"""Nearest-neighbour example selection over the pool's queries: BM25, dense, or random (ablation)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Sequence

import numpy as np

from rare.prompt import Example, ScoredExample

Embed = Callable[[list[str]], np.ndarray]
_EXTRA = 8  # candidates fetched beyond k so exclusions still leave k


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


class Selector:
    """Returns, per query, up to k pool examples, most similar first."""

    name = "base"

    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)
        self._norms = [_norm(e.query) for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def _candidates(self, queries: list[str], n: int) -> list[list[tuple[int, float]]]:
        raise NotImplementedError

    def select(
        self,
        queries: Sequence[str],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        exclude_identical: bool = False,
    ) -> list[list[ScoredExample]]:
        """`exclude[i]` holds example ids query i may not use; `exclude_identical` drops pool queries
        whose text equals the target (training never uses a query as its own example)."""
        queries = list(queries)
        if k <= 0 or not self.examples or not queries:
            return [[] for _ in queries]
        worst = max((len(e) for e in exclude), default=0) if exclude else 0
        n = min(len(self.examples), k + worst + _EXTRA)
        out = []
        for i, cands in enumerate(self._candidates(queries, n)):
            banned = exclude[i] if exclude else ()
            target = _norm(queries[i]) if exclude_identical else None
            picked: list[ScoredExample] = []
            for idx, score in cands:
                ex = self.examples[idx]
                if ex.id in banned or (target is not None and self._norms[idx] == target):
                    continue
                picked.append(ScoredExample(ex, float(score)))
                if len(picked) == k:
                    break
            out.append(picked)
        return out


class BM25Selector(Selector):
    name = "bm25"

    def __init__(self, examples: Sequence[Example]):
        super().__init__(examples)
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG
        self._bm25s = bm25s
        self._stemmer = _stemmer()
        self._index = None
        if self.examples:
            self._index = bm25s.BM25()
            self._index.index(self._tokenize([e.query for e in self.examples]), show_progress=False)

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        tok = self._bm25s.tokenize(
            texts, stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False
        )
        return [list(t) for t in tok]

    def _candidates(self, queries: list[str], n: int) -> list[list[tuple[int, float]]]:
        toks = self._tokenize(queries)
        out: list[list[tuple[int, float]]] = [[] for _ in queries]
        live = [i for i, t in enumerate(toks) if t]
        if not live:
            return out
        docs, scores = self._index.retrieve([toks[i] for i in live], k=n, show_progress=False, n_threads=1)
        for row, i in enumerate(live):
            # A zero score shares no term with the query: no similarity signal, so not a neighbour.
            out[i] = [(int(d), float(s)) for d, s in zip(docs[row], scores[row], strict=True) if s > 0]
        return out


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


class DenseSelector(Selector):
    """Inner product over normalized plain-query embeddings of the pool."""

    name = "dense"

    def __init__(self, examples: Sequence[Example], embed: Embed, embeddings: np.ndarray | None = None):
        super().__init__(examples)
        from rare.faiss_index import flat_ip

        self._embed = embed
        if embeddings is None:
            embeddings = embed([e.query for e in self.examples]) if self.examples else None
        self.embeddings = embeddings
        self._index = None
        if embeddings is not None and len(embeddings):
            self._index = flat_ip(embeddings)

    def _candidates(self, queries: list[str], n: int) -> list[list[tuple[int, float]]]:
        q = np.ascontiguousarray(self._embed(queries), dtype=np.float32)
        scores, idx = self._index.search(q, n)
        return [
            [(int(i), float(s)) for i, s in zip(ri, rs, strict=True) if i >= 0]
            for ri, rs in zip(idx, scores, strict=True)
        ]


class RandomSelector(Selector):
    """Seeded per query text, so a query gets the same examples whatever order it comes in."""

    name = "random"

    def __init__(self, examples: Sequence[Example], seed: int = 0):
        super().__init__(examples)
        self.seed = seed

    def _candidates(self, queries: list[str], n: int) -> list[list[tuple[int, float]]]:
        out = []
        for q in queries:
            h = int.from_bytes(hashlib.blake2b(q.encode(), digest_size=8).digest(), "little")
            rng = np.random.default_rng([self.seed, h])
            out.append([(int(i), 0.0) for i in rng.choice(len(self.examples), size=n, replace=False)])
        return out


def make_selector(
    name: str,
    examples: Sequence[Example],
    *,
    embed: Embed | None = None,
    embeddings: np.ndarray | None = None,
    seed: int = 0,
) -> Selector:
    if name == "bm25":
        return BM25Selector(examples)
    if name == "dense":
        if embed is None:
            raise ValueError("dense selection needs an embedding function")
        return DenseSelector(examples, embed, embeddings)
    if name == "random":
        return RandomSelector(examples, seed)
    raise ValueError(f"unknown selector '{name}' (choose bm25, dense or random)")
