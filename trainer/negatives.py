"""In-batch false negatives: candidates judged relevant to an anchor are not negatives for it.

NFCorpus judges ~43 documents per training query, many shared between queries: in random batches of 32,
30% of the anchors meet at least one other row's positive that is judged relevant to them (SciFact: 5%).
Scoring those as negatives teaches the model to push relevant documents away."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence

import numpy as np


def false_negative_mask(
    relevant: Sequence[Collection[Hashable]], candidates: Sequence[Hashable]
) -> np.ndarray:
    """(anchors, candidates) booleans: True where candidate c is judged relevant to anchor i and is not
    its own positive (candidate i)."""
    mask = np.array([[c in rel for c in candidates] for rel in relevant], dtype=bool).reshape(
        len(relevant), len(candidates)
    )
    n = min(len(relevant), len(candidates))
    mask[np.arange(n), np.arange(n)] = False
    return mask


def loss_candidates(doc_keys: Sequence[Sequence[Hashable]]) -> list[Hashable]:
    """The loss's candidate order: every row's positive, then every row's first negative, and so on."""
    columns = len(doc_keys[0]) if doc_keys else 0
    return [keys[j] for j in range(columns) for keys in doc_keys]
