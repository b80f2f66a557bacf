"""Batches for query pooling: the anchors' pool masks come from the core's one tokenization rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from rare.pooling import tokenize_with_query_mask

POOL_FROM_COLUMN = "pool_from"


@dataclass
class QueryPoolingCollator(SentenceTransformerDataCollator):
    """Adds `anchor_pool_mask` (the target query's tokens) next to the usual tokenized columns."""

    tokenizer: Any = None
    max_seq_length: int = 512

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        starts = [row[POOL_FROM_COLUMN] for row in features]
        rows = [{k: v for k, v in row.items() if k != POOL_FROM_COLUMN} for row in features]
        batch = super().__call__(rows)
        enc, mask = tokenize_with_query_mask(
            self.tokenizer, [row["anchor"] for row in rows], starts, self.max_seq_length
        )
        # The mask is only meaningful over the very tokens the model will see.
        if not torch.equal(enc["input_ids"], batch["anchor_input_ids"]):
            raise RuntimeError("query pooling: anchor tokenization differs from the trainer's")
        batch["anchor_pool_mask"] = mask
        return batch
