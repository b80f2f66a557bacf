"""Random augmented queries over the tiny sample's texts and odd strings, for token-level equivalences."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from rare.beir_data import load_beir
from rare.prompt import AugmentedQuery, Example, ScoredExample
from tests.conftest import ROOT

ODD_TEXTS = [
    "naïve café résumé, déjà vu!",
    "中文字符和English混合",
    "emoji 🙂🙃 and symbols ©®™ — dash…",
    "x" * 150 + " a word over a hundred characters",
    "ends with a combining mark e\u0301",
    "\u0301starts with one",
    "tabs\tand\r\nwindows line ends\n",
    "   leading and trailing spaces   ",
    "(parenthesised) [bracketed] {braced}: 3.14, 1e-5; a/b\\c",
]


def random_builds(build: Callable[..., AugmentedQuery], n: int, seed: int = 0) -> Iterator[AugmentedQuery]:
    """`n` results of `build(query, examples most similar first, instruction)`, 0-5 examples each."""
    ds = load_beir(ROOT / "sample" / "tiny", ["train"])
    texts = list(ds.queries.values()) + [d["text"] for d in ds.corpus.values()] + ODD_TEXTS
    rng = random.Random(seed)
    for _ in range(n):
        exs = [Example(str(j), rng.choice(texts), rng.choice(texts)) for j in range(rng.randint(0, 5))]
        scored = [ScoredExample(e, float(10 - i)) for i, e in enumerate(exs)]
        yield build(rng.choice(texts), scored, rng.choice([None, "Find", "Given a claim, find: it"]))
