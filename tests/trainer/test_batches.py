"""Training batches: duplicates judged on texts only, and judged-relevant candidates kept out of the
negatives (collator, loss and the forgetting-aware weights)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from trainer.collator import TrainingCollator
from trainer.data import build_samples, load_sources, to_dataset
from trainer.loss import WeightedInfoNCE
from trainer.negatives import false_negative_mask, loss_candidates
from trainer.sampler import TextNoDuplicatesBatchSampler

from .test_train import cfg


def test_sampler_fills_batches_whatever_the_other_columns_hold():
    """Every plain anchor of a dataset shares one pooling start: that must not keep them apart."""
    from datasets import Dataset

    n = 96
    plain = [i % 3 == 0 for i in range(n)]
    ds = Dataset.from_dict(
        {
            "anchor": [f"a{i}" for i in range(n)],
            "positive": [f"p{i % 90}" for i in range(n)],  # six texts twice: must not share a batch
            "label": [1.0] * n,
            "pool_from": [95 if p else 200 + i for i, p in enumerate(plain)],
            "blocks": [[0, 95] if p else [0, 95, 200 + i] for i, p in enumerate(plain)],
        }
    )
    gen = torch.Generator()
    sampler = TextNoDuplicatesBatchSampler(
        ds, batch_size=32, drop_last=False, valid_label_columns=["label"], generator=gen, seed=0
    )
    batches = list(sampler)
    assert len(sampler) == 3 and len(batches) <= 4  # a duplicate may be left over for a last batch
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert [len(b) for b in batches[:3]] == [32, 32, 32 - (len(batches) - 3)]
    assert all(sum(plain[i] for i in b) > 1 for b in batches[:3])
    for b in batches:
        texts = [ds[i]["positive"] for i in b]
        assert len(set(texts)) == len(texts)


def test_false_negative_mask():
    relevant = [{"d1", "d2"}, {"d2"}, set()]
    cands = loss_candidates([["d1", "n1"], ["d2", "d1"], ["d3", "d2"]])
    assert cands == ["d1", "d2", "d3", "n1", "d1", "d2"]
    mask = false_negative_mask(relevant, cands)
    assert mask.tolist() == [
        [False, True, False, False, True, True],  # its own positive (column 0) stays the target
        [False, False, False, False, False, True],
        [False] * 6,
    ]


@pytest.fixture
def shared_positive(tmp_path, tiny_dir):
    """The tiny fixture with q1 also judging d2 (q2's positive) relevant."""
    data = tmp_path / "tiny"
    shutil.copytree(tiny_dir, data)
    with open(data / "qrels" / "train.tsv", "a") as f:
        f.write("q1\td2\t1\n")
    return data


def test_collator_masks_judged_positives_and_the_loss_drops_them(tmp_path, shared_positive, model):
    c = cfg(tmp_path, shared_positive, k=0, hard_negatives=1)
    samples = build_samples(c, model, load_sources(c, model))
    ds = to_dataset(samples, "full")
    pairs = [("q1", "tiny/d1"), ("q2", "tiny/d2"), ("q3", "tiny/d3")]
    rows = [next(i for i, s in enumerate(samples) if (s.query_id, s.doc_keys[0]) == p) for p in pairs]
    collate = TrainingCollator(preprocess_fn=model.st.preprocess, tokenizer=model.tokenizer)
    batch = collate([ds[i] for i in rows])
    mask = batch["anchor_fn_mask"]
    assert mask[0, 1]  # q2's positive (d2) is judged relevant to q1: not a negative for it
    cands = [samples[r].doc_keys[j] for j in (0, 1) for r in rows]
    expected = [
        [k in samples[r].relevant and j != i for j, k in enumerate(cands)] for i, r in enumerate(rows)
    ]
    assert mask.tolist() == expected

    def features(with_mask: bool):
        out = []
        for prefix in ("anchor_", "positive_", "negative_1_"):
            out.append({k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)})
        if not with_mask:
            del out[0]["fn_mask"]
        return out

    loss = WeightedInfoNCE(model.st)
    with torch.no_grad():
        masked = float(loss(features(True), None))
        plain = float(loss(features(False), None))
    assert masked < plain  # one fewer negative for q1; nothing else changes


def test_forgetting_weights_skip_judged_positives(tmp_path, shared_positive, model):
    from trainer.weighting import pretrained_losses

    c = cfg(tmp_path, shared_positive, k=0, max_pairs_per_query=1, hard_negatives=0)
    samples = build_samples(c, model, load_sources(c, model))
    with_judgments = pretrained_losses(model, samples, 0.05, group=len(samples))
    for s in samples:
        s.relevant = frozenset()
    without = pretrained_losses(model, samples, 0.05, group=len(samples))
    q1 = next(i for i, s in enumerate(samples) if s.query_id == "q1")
    assert with_judgments[q1] < without[q1]
    others = [i for i in range(len(samples)) if i != q1]
    np.testing.assert_allclose(with_judgments[others], without[others])
