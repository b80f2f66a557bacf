"""Batches for query pooling and block attention: the anchors' pool masks and attention segments
come from the core's one tokenization rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from rare.block_attention import segment_ids
from rare.pooling import tokenize_with_query_mask

POOL_FROM_COLUMN = "pool_from"
BLOCKS_COLUMN = "blocks"


@dataclass
class QueryPoolingCollator(SentenceTransformerDataCollator):
    """Adds `anchor_pool_mask` (the target query's tokens) next to the usual tokenized columns, and
    `anchor_segments` (rare.block_attention) when the dataset has block starts."""

    tokenizer: Any = None
    max_seq_length: int = 512

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        starts = [row[POOL_FROM_COLUMN] for row in features]
        blocks = [row.get(BLOCKS_COLUMN) for row in features]
        extra = (POOL_FROM_COLUMN, BLOCKS_COLUMN)
        rows = [{k: v for k, v in row.items() if k not in extra} for row in features]
        batch = super().__call__(rows)
        enc, mask = tokenize_with_query_mask(
            self.tokenizer, [row["anchor"] for row in rows], starts, self.max_seq_length, keep_offsets=True
        )
        # The mask is only meaningful over the very tokens the model will see.
        if not torch.equal(enc["input_ids"], batch["anchor_input_ids"]):
            raise RuntimeError("query pooling: anchor tokenization differs from the trainer's")
        batch["anchor_pool_mask"] = mask
        if any(b is not None for b in blocks):
            batch["anchor_segments"] = segment_ids(
                enc["offset_mapping"], enc["attention_mask"], [tuple(b or ()) for b in blocks]
            )
        return batch
