"""Training batches: the anchors' pool masks and attention segments come from the core's one
tokenization rule, and each anchor's in-batch false negatives from the judgments (trainer.negatives)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from rare.block_attention import segment_ids
from rare.pooling import tokenize_with_query_mask
from trainer.negatives import false_negative_mask, loss_candidates

POOL_FROM_COLUMN = "pool_from"
BLOCKS_COLUMN = "blocks"
DOC_KEYS_COLUMN = "doc_keys"
RELEVANT_COLUMN = "relevant"
EXTRA_COLUMNS = (POOL_FROM_COLUMN, BLOCKS_COLUMN, DOC_KEYS_COLUMN, RELEVANT_COLUMN)


@dataclass
class TrainingCollator(SentenceTransformerDataCollator):
    """The usual tokenized columns, plus, when the dataset has them: `anchor_pool_mask` (the target
    query's tokens), `anchor_segments` (rare.block_attention) and `anchor_fn_mask` (anchors x the
    loss's candidates: judged relevant, so not a negative)."""

    tokenizer: Any = None
    max_seq_length: int = 512

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [{k: v for k, v in row.items() if k not in EXTRA_COLUMNS} for row in features]
        batch = super().__call__(rows)
        if POOL_FROM_COLUMN in features[0]:
            self._pool(batch, rows, features)
        if DOC_KEYS_COLUMN in features[0]:
            mask = false_negative_mask(
                [set(row[RELEVANT_COLUMN]) for row in features],
                loss_candidates([row[DOC_KEYS_COLUMN] for row in features]),
            )
            batch["anchor_fn_mask"] = torch.from_numpy(mask)
        return batch

    def _pool(self, batch: dict[str, Any], rows: list[dict], features: list[dict]) -> None:
        starts = [row[POOL_FROM_COLUMN] for row in features]
        blocks = [row.get(BLOCKS_COLUMN) for row in features]
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
