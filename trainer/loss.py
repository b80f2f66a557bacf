"""Contrastive loss: in-batch and hard negatives, a temperature, optional per-sample weights."""

from __future__ import annotations

import torch
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

from rare.block_attention import bert_of, block_forward
from rare.pooling import masked_mean


class WeightedInfoNCE(nn.Module):
    """InfoNCE over [all positives; all hard negatives] of the batch (MultipleNegativesRankingLoss)
    less each anchor's judged-relevant candidates (`fn_mask`), each sample's term weighted by its
    `label` (1.0 = plain MNRL; forgetting-aware weights otherwise).
    Anchors that come with a `pool_mask` (query pooling) are pooled over those tokens only; with
    `segments` too they are encoded under block attention (rare.block_attention)."""

    def __init__(self, model, temperature: float = 0.05):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, sentence_features, labels: Tensor | None) -> Tensor:
        pool_mask = sentence_features[0].pop("pool_mask", None)
        segments = sentence_features[0].pop("segments", None)
        fn_mask = sentence_features[0].pop("fn_mask", None)
        if pool_mask is None:
            emb = embed_columns(self.model, sentence_features)
        else:
            if segments is None:
                tokens = self.model(sentence_features[0])["token_embeddings"]
            else:
                ids = sentence_features[0]["input_ids"]
                tokens = block_forward(bert_of(self.model), ids, segments.to(ids.device))
            emb = [
                masked_mean(tokens, pool_mask.to(tokens.device)),
                *embed_columns(self.model, sentence_features[1:], separate_first=False),
            ]
        anchors = nn.functional.normalize(emb[0], dim=-1)
        cands = nn.functional.normalize(torch.cat(emb[1:], dim=0), dim=-1)
        logits = anchors @ cands.T / self.temperature
        if fn_mask is not None:  # judged relevant to the anchor: not a negative (trainer.negatives)
            logits = logits.masked_fill(fn_mask.to(logits.device), float("-inf"))
        target = torch.arange(anchors.size(0), device=anchors.device)
        per_sample = nn.functional.cross_entropy(logits, target, reduction="none")
        if labels is None:
            return per_sample.mean()
        w = labels.to(per_sample.dtype)
        return (w * per_sample).sum() / w.sum().clamp_min(1e-8)

    def get_config_dict(self) -> dict:
        return {"temperature": self.temperature}
