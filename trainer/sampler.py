"""Batches without duplicate texts, judged on the text columns only."""

from __future__ import annotations

from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

TEXT_COLUMNS = ("anchor", "positive")
NEGATIVE_PREFIX = "negative_"


def text_columns(column_names: list[str]) -> list[str]:
    return [c for c in column_names if c in TEXT_COLUMNS or c.startswith(NEGATIVE_PREFIX)]


class TextNoDuplicatesBatchSampler(NoDuplicatesBatchSampler):
    """sentence-transformers' NO_DUPLICATES compares every column's value, so the integer and list
    columns beside the texts (a query's pooling start, its block starts, its relevance keys) count as
    duplicates too: every plain anchor of a dataset shares one pooling start, which allowed one plain
    sample per batch and left the rest to batches of one at the end of the pass. Here only the texts
    decide (a duplicate text would still be a false in-batch negative)."""

    def __init__(self, dataset, *args, **kwargs):
        super().__init__(dataset.select_columns(text_columns(dataset.column_names)), *args, **kwargs)
