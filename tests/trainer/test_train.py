"""Training on the tiny fixture: an overfit check that can fail, self-exclusion, reload, resume."""

from __future__ import annotations

import numpy as np
import pytest

from rare.beir_data import load_beir
from rare.encoding import encode_texts
from rare.model import load_model
from trainer.config import TrainConfig
from trainer.data import build_samples, load_sources, to_dataset
from trainer.train import checkpoint_dir, run_training
from trainer.weighting import easy_sample_weights


def cfg(tmp_path, tiny_dir, **kw) -> TrainConfig:
    base = dict(
        beir=[tiny_dir],
        output=tmp_path / "model",
        device="cpu",
        k=2,
        batch_size=4,
        lr=1e-4,
        hard_negatives=1,
        skip_top=0,
        save_steps=2,
        show_progress=False,
        cache_dir=tmp_path / "cache",
        max_seq_length=256,
        plain_fraction=0.3,
    )
    return TrainConfig(**{**base, **kw})


def corpus_loss(model, tiny_dir, samples) -> float:
    """Mean -log p(positive | anchor) against the whole corpus at temperature 0.05: the objective training
    lowers, measured on the training anchors exactly as built (examples included)."""
    ds = load_beir(tiny_dir)
    ids = list(ds.corpus)
    docs = encode_texts(model, [ds.doc_text(i) for i in ids])
    anchors = encode_texts(
        model,
        [s.anchor for s in samples],
        pool_from=[s.pool_from for s in samples],
        blocks=[s.blocks for s in samples],
    )
    qrels = ds.split("train")
    logits = anchors @ docs.T / 0.05
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    pos = [ids.index(next(iter(qrels[s.query_id]))) for s in samples]
    return float(-logp[np.arange(len(samples)), pos].mean())


def test_training_queries_never_use_themselves_as_examples(tmp_path, tiny_dir, model):
    c = cfg(
        tmp_path, tiny_dir, plain_fraction=0.0, k=3, selector="dense"
    )  # dense: every query has neighbours
    samples = build_samples(c, model, load_sources(c, model))
    assert len(samples) == 8
    for s in samples:
        assert s.example_ids and s.query_id not in s.example_ids
        assert s.anchor.endswith(f"Query: {s.query}")
        assert s.anchor.count("Query: ") == len(s.example_ids) + 1
        assert s.query not in s.anchor[: -len(s.query)]  # its own text is not among the examples
        assert len(s.negatives) == 1 and s.negatives[0] != s.positive
    texts = ["anchor", "positive", "negative_1"]
    assert to_dataset(samples, "full").column_names == [*texts, "label", "doc_keys", "relevant"]
    assert "pool_from" in to_dataset(samples, "query").column_names


def test_plain_fraction_and_vary_k(tmp_path, tiny_dir, model):
    c = cfg(tmp_path, tiny_dir, plain_fraction=1.0)
    assert all(not s.example_ids for s in build_samples(c, model, load_sources(c, model)))
    c = cfg(tmp_path, tiny_dir, plain_fraction=0.0, k=3, vary_k=True, seed=3)
    ks = {len(s.example_ids) for s in build_samples(c, model, load_sources(c, model))}
    assert len(ks) > 1 and max(ks) <= 3


def test_random_example_fraction_swaps_in_random_examples(tmp_path, tiny_dir, model):
    from rare.selection import make_selector

    def example_ids(**kw) -> list[list[str]]:
        c = cfg(tmp_path, tiny_dir, plain_fraction=0.0, k=3, **kw)
        return [s.example_ids for s in build_samples(c, model, load_sources(c, model))]

    src = load_sources(cfg(tmp_path, tiny_dir), model)[0]
    exclude = [{p.query_id} for p in src.pairs]
    rand = make_selector("random", src.pool, seed=0).select(
        [p.query for p in src.pairs], 3, exclude=exclude, exclude_identical=True
    )
    random_ids = [sorted(s.example.id for s in r) for r in rand]
    nearest, noisy = example_ids(), example_ids(random_example_fraction=1.0)
    assert [sorted(e) for e in noisy] == random_ids  # every sample draws from the random selector
    assert nearest != noisy
    assert all(p.query_id not in e for p, e in zip(src.pairs, noisy, strict=True))
    assert example_ids(random_example_fraction=0.0) == nearest


def test_max_pairs_per_query_keeps_the_best_graded(tmp_path, tiny_dir, model):
    import shutil

    data = tmp_path / "tiny"
    shutil.copytree(tiny_dir, data)
    with open(data / "qrels" / "train.tsv", "a") as f:
        # q1: d1 (1), d2 (1), d3 (2); q2: d2 listed first, then six ties that sort before it by id.
        f.write(
            "q1\td2\t1\nq1\td3\t2\n" + "".join(f"q2\t{d}\t1\n" for d in ("d10", "d1", "d9", "d8", "d7", "d6"))
        )
    c = cfg(tmp_path, data, hard_negatives=0)
    (src,) = load_sources(c, model)
    assert sum(p.query_id == "q1" for p in src.pairs) == 3 and len(src.pairs) == 16
    ds = load_beir(data)
    c = cfg(tmp_path, data, hard_negatives=0, max_pairs_per_query=2)
    (src,) = load_sources(c, model)
    # Best grade first, ties in the file's order (not by id, not shuffled).
    assert [p.positive for p in src.pairs if p.query_id == "q1"] == [ds.doc_text("d3"), ds.doc_text("d1")]
    c = cfg(tmp_path, data, hard_negatives=0, max_pairs_per_query=1)
    (src,) = load_sources(c, model)
    assert [p.positive for p in src.pairs if p.query_id == "q1"] == [ds.doc_text("d3")]
    assert [p.positive for p in src.pairs if p.query_id == "q2"] == [ds.doc_text("d2")]
    assert len(src.pairs) == 8


def test_easy_sample_weights_favour_low_loss():
    w = easy_sample_weights(np.array([0.1, 1.0, 3.0]))
    assert w[0] > w[1] > w[2] and abs(w.mean() - 1) < 1e-9


def test_overfit_lowers_the_loss_and_model_reloads_with_its_settings(tmp_path, tiny_dir, model):
    c = cfg(tmp_path, tiny_dir, max_steps=8, forgetting_aware=True)
    samples = build_samples(c, model, load_sources(c, model))
    before = corpus_loss(model, tiny_dir, samples)
    summary = run_training(c)
    assert summary["global_step"] == 8 and summary["forgetting_aware"]["weight_max"] > 1
    trained = load_model(str(c.output), "cpu", cache=False)
    assert trained.rare.trained and trained.rare.k == 2 and trained.rare.selector == "bm25"
    assert trained.rare.max_query_tokens == 256 and trained.rare.training["datasets"] == ["tiny"]
    assert trained.rare.training["precision"] == "float32"  # CPU: no autocast unless asked
    assert trained.fingerprint != model.fingerprint
    after = corpus_loss(trained, tiny_dir, samples)
    assert after < 0.7 * before, (before, after)
    assert not checkpoint_dir(c.output).exists()
    assert load_model(None, "cpu").fingerprint == model.fingerprint  # the shared base model is untouched


def test_mixed_precision_on_cpu_trains_and_saves_float32_weights(tmp_path, tiny_dir, model):
    c = cfg(tmp_path, tiny_dir, max_steps=8, mixed_precision=True)
    samples = build_samples(c, model, load_sources(c, model))
    before = corpus_loss(model, tiny_dir, samples)
    run_training(c)
    trained = load_model(str(c.output), "cpu", cache=False)
    assert trained.rare.training["precision"] == "bf16"
    assert {str(p.dtype) for p in trained.st.parameters()} == {"torch.float32"}  # autocast, not a cast
    assert corpus_loss(trained, tiny_dir, samples) < 0.7 * before


def test_query_pooling_batches_and_training(tmp_path, tiny_dir, model):
    from trainer.collator import TrainingCollator

    c = cfg(tmp_path, tiny_dir, pooling="query", plain_fraction=0.0, k=2, selector="dense", max_steps=6)
    samples = build_samples(c, model, load_sources(c, model))
    assert all(s.anchor[s.pool_from :] == s.query and s.pool_from > 0 for s in samples)
    ds = to_dataset(samples, "query")
    collate = TrainingCollator(
        preprocess_fn=model.st.preprocess, tokenizer=model.tokenizer, max_seq_length=256
    )
    batch = collate([ds[i] for i in range(4)])
    for row, s in zip(range(4), samples[:4], strict=True):
        pooled = batch["anchor_input_ids"][row][batch["anchor_pool_mask"][row]].tolist()
        assert pooled == model.tokenizer(s.query, add_special_tokens=False)["input_ids"]
    assert "positive_pool_mask" not in batch
    before = corpus_loss(model, tiny_dir, samples)
    run_training(c)
    trained = load_model(str(c.output), "cpu", cache=False)
    assert trained.rare.pooling == "query"
    assert corpus_loss(trained, tiny_dir, samples) < 0.7 * before


def test_block_attention_batches_and_training(tmp_path, tiny_dir, model):
    """The collator's segments split each anchor at its example blocks; training through the block
    forward lowers the loss as served (cached examples), and the model reloads with attention 'block'."""
    from rare.block_attention import PREFIX, QUERY
    from trainer.collator import TrainingCollator

    c = cfg(tmp_path, tiny_dir, attention="block", plain_fraction=0.0, k=2, max_steps=6)
    samples = build_samples(c, model, load_sources(c, model))
    assert all(len(s.blocks) == len(s.example_ids) + 1 for s in samples)
    assert sum(len(s.example_ids) for s in samples[:4]) >= 4
    ds = to_dataset(samples, "query", "block")
    collate = TrainingCollator(
        preprocess_fn=model.st.preprocess, tokenizer=model.tokenizer, max_seq_length=256
    )
    batch = collate([ds[i] for i in range(4)])
    for row, s in enumerate(samples[:4]):
        seg, ids = batch["anchor_segments"][row], batch["anchor_input_ids"][row]
        examples = set(seg[(seg > PREFIX) & (seg < QUERY)].tolist())
        assert seg[0] == PREFIX and examples == set(range(1, len(s.example_ids) + 1))
        query_part = model.tokenizer.decode(ids[seg == QUERY], skip_special_tokens=True)
        assert query_part == model.tokenizer.decode(
            model.tokenizer(f"Query: {s.query}", add_special_tokens=False)["input_ids"]
        )
    before = corpus_loss(model, tiny_dir, samples)
    run_training(c)
    trained = load_model(str(c.output), "cpu", cache=False)
    assert trained.rare.attention == "block" and trained.rare.pooling == "query"
    assert corpus_loss(trained, tiny_dir, samples) < 0.7 * before
    # Served from cached example blocks the second time, with the same embeddings.
    args = dict(pool_from=[s.pool_from for s in samples], blocks=[s.blocks for s in samples])
    first = encode_texts(trained, [s.anchor for s in samples], **args)
    assert trained.block_encoder.stats()["entries"] > 0
    again = encode_texts(trained, [s.anchor for s in samples], **args)
    assert trained.block_encoder.stats()["hits"] > 0
    np.testing.assert_allclose(first, again, atol=1e-6)


def test_block_attention_needs_query_pooling(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="pooling 'query'"):
        cfg(tmp_path, tiny_dir, attention="block", pooling="full")


def test_resume_from_checkpoint(tmp_path, tiny_dir):
    c = cfg(tmp_path, tiny_dir, max_steps=2, keep_checkpoints=True, hard_negatives=0)
    first = run_training(c)
    assert first["resumed_from"] is None and (checkpoint_dir(c.output) / "checkpoint-2").is_dir()
    second = run_training(c.model_copy(update={"max_steps": 4}))
    assert second["resumed_from"].endswith("checkpoint-2")
    assert second["global_step"] == 4


def test_no_training_data_is_a_clear_error(tmp_path):
    from rare.beir_data import DataError

    with pytest.raises(DataError, match="no training pairs"):
        run_training(TrainConfig(output=tmp_path / "m", device="cpu", show_progress=False))
