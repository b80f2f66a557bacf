"""Forgetting-aware weights ("Upweighting Easy Samples in Fine-Tuning Mitigates Forgetting"):
samples the pre-trained model already finds easy (low loss) get more weight, so fine-tuning drifts less."""

from __future__ import annotations

import numpy as np

from rare.encoding import encode_texts
from rare.model import LoadedModel
from trainer.data import Sample
from trainer.negatives import false_negative_mask, loss_candidates


def pretrained_losses(
    model: LoadedModel, samples: list[Sample], temperature: float, group: int = 32, seed: int = 0
) -> np.ndarray:
    """Each sample's InfoNCE loss under the pre-trained model, against its own hard negatives and the
    positives of a random group of other samples (what a training batch would hold), less the
    candidates judged relevant to it."""
    a = encode_texts(
        model,
        [s.anchor for s in samples],
        pool_from=[s.pool_from for s in samples],
        blocks=[s.blocks for s in samples],
    )
    p = encode_texts(model, [s.positive for s in samples])
    negs = [n for s in samples for n in s.negatives]
    n = encode_texts(model, negs) if negs else np.zeros((0, a.shape[1]), np.float32)
    per = len(samples[0].negatives) if samples else 0
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    losses = np.zeros(len(samples), dtype=np.float64)
    for start in range(0, len(order), group):
        idx = order[start : start + group]
        # The loss's candidate order: the group's positives, then its first negatives, and so on.
        negs_of = n.reshape(len(samples), per, a.shape[1])[idx].transpose(1, 0, 2).reshape(-1, a.shape[1])
        logits = a[idx] @ np.concatenate([p[idx], negs_of]).T / temperature
        keys = loss_candidates([samples[i].doc_keys for i in idx])
        logits[false_negative_mask([samples[i].relevant for i in idx], keys)] = -np.inf  # as in training
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses[idx] = -logp[np.arange(len(idx)), np.arange(len(idx))]
    return losses


def easy_sample_weights(losses: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """w_i proportional to exp(-loss_i / T), scaled to mean 1."""
    z = -(losses - losses.min()) / temperature
    w = np.exp(z)
    return w / w.mean()
