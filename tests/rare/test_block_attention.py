"""Block attention: the cached serving path equals the whole-string forward that training runs."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from rare.block_attention import (
    PREFIX,
    QUERY,
    BlockAttentionError,
    BlockEncoder,
    attention_groups,
    bert_of,
    block_forward,
    plain_linear,
    segment_ids,
)
from rare.pooling import masked_mean, tokenize_with_query_mask
from rare.prompt import Example, ScoredExample
from rare.query import QueryAugmenter

EXAMPLES = [
    ScoredExample(
        Example(
            str(i), f"what does study {i} say about insulin", f"Study {i} measured insulin in mice. " * 4
        ),
        1.0 - i / 10,
    )
    for i in range(5)
]


def augmented(model):
    aug = QueryAugmenter(model, attention="block")
    trained_like = QueryAugmenter(model, attention="block", always_instruct=True)
    return [
        aug.build("does vitamin d prevent fractures", EXAMPLES[:3], None),
        aug.build("insulin resistance in obese adults", EXAMPLES[1:5], None),  # shares three examples
        # A plain query of a block-trained model: its instruction (another prefix) and itself.
        trained_like.build("a query with its instruction only", [], "Find abstracts"),
    ]


def whole_string(model, texts, pool_from, blocks) -> np.ndarray:
    """The training path: the whole string through one block-masked forward."""
    enc, pool = tokenize_with_query_mask(
        model.tokenizer, texts, pool_from, model.max_tokens, keep_offsets=True
    )
    seg = segment_ids(enc.pop("offset_mapping"), enc["attention_mask"], blocks)
    with torch.inference_mode():
        states = block_forward(bert_of(model.st), enc["input_ids"], seg)
        return torch.nn.functional.normalize(masked_mean(states, pool), dim=-1).numpy()


def test_segments_split_at_the_blocks(model):
    a = augmented(model)[0]
    assert len(a.blocks) == 4 and a.text[a.blocks[-1] :].startswith("Query: does vitamin d")
    enc, _ = tokenize_with_query_mask(model.tokenizer, [a.text], [a.pool_from], 256, keep_offsets=True)
    seg = segment_ids(enc["offset_mapping"], enc["attention_mask"], [a.blocks])[0]
    ids = enc["input_ids"][0]
    assert seg[0] == PREFIX and seg[-1] == QUERY  # [CLS] with the instruction, [SEP] with the query
    decode = model.tokenizer.decode
    assert decode(ids[seg == PREFIX], skip_special_tokens=True).startswith("instruct : given a query")
    # Examples are written most similar last: block 3 is EXAMPLES[0].
    assert decode(ids[seg == 3]).startswith("query : what does study 0 say")
    assert decode(ids[seg == QUERY], skip_special_tokens=True) == "query : does vitamin d prevent fractures"


def test_cached_serving_equals_the_training_forward(model):
    augs = augmented(model)
    texts = [a.text for a in augs] + ["a plain document about insulin"]
    pool_from = [a.pool_from for a in augs] + [0]
    blocks = [a.blocks for a in augs] + [()]
    enc = BlockEncoder(model.st)
    got = enc.encode(texts, pool_from, blocks, model.max_tokens)
    np.testing.assert_allclose(got, whole_string(model, texts, pool_from, blocks), atol=1e-5)
    assert len(augs[2].blocks) == 1  # the instruction, then the query
    assert enc.stats()["misses"] == 2 + 5 and enc.stats()["hits"] == 0  # two prefixes, five examples
    again = enc.encode(texts[::-1], pool_from[::-1], blocks[::-1], model.max_tokens)[::-1]
    np.testing.assert_allclose(again, got, atol=1e-6)
    assert enc.stats()["hits"] == 7 and enc.stats()["misses"] == 7
    # A text without blocks is the model's own embedding (full attention, mean pooling).
    np.testing.assert_allclose(got[-1], model.encode([texts[-1]])[0], atol=1e-5)


def test_a_small_cache_evicts_and_stays_correct(model):
    augs = augmented(model)
    args = ([a.text for a in augs], [a.pool_from for a in augs], [a.blocks for a in augs])
    roomy = BlockEncoder(model.st)
    roomy.encode(*args, model.max_tokens)
    entry = roomy.stats()["bytes"] / roomy.stats()["entries"]
    small = BlockEncoder(model.st, cache_bytes=int(2.5 * entry))  # room for about two of seven
    got = small.encode(*args, model.max_tokens)
    got = small.encode(*args, model.max_tokens)  # the second time, mostly evicted: computed again
    assert small.stats()["bytes"] <= 2.5 * entry and 0 < small.stats()["entries"] < 7
    assert small.stats()["misses"] > 7
    np.testing.assert_allclose(got, whole_string(model, *args), atol=1e-5)


def test_examples_do_not_see_the_query_but_the_query_sees_them(model):
    aug = QueryAugmenter(model, attention="block")
    one = aug.build("does vitamin d prevent fractures", EXAMPLES[:2], None)
    other = aug.build("does vitamin d prevent fractures", EXAMPLES[2:4], None)
    plain = QueryAugmenter(model, attention="block").build("does vitamin d prevent fractures", [], None)
    three = (one, other, plain)
    e = model.encode([a.text for a in three], [a.pool_from for a in three], [a.blocks for a in three])
    assert np.abs(e[0] - e[1]).max() > 1e-3 and np.abs(e[0] - e[2]).max() > 1e-3
    # The examples' states are the same under another query.
    enc, _ = tokenize_with_query_mask(
        model.tokenizer, [one.text, one.text.replace("fractures", "cancer")], [1, 1], 256, keep_offsets=True
    )
    seg = segment_ids(enc.pop("offset_mapping"), enc["attention_mask"], [one.blocks, one.blocks])
    with torch.inference_mode():
        states = block_forward(bert_of(model.st), enc["input_ids"], seg)
    ex = (seg[0] != QUERY) & (seg[0] >= 0)
    np.testing.assert_allclose(states[0][ex], states[1][ex], atol=1e-5)
    q = seg[0] == QUERY
    assert (states[0][q] - states[1][q]).abs().max() > 1e-2


def test_model_encode_routes_block_texts_and_keeps_documents_plain(model):
    augs = augmented(model)
    texts = [augs[0].text, "a document"]
    got = model.encode(texts, [augs[0].pool_from, 0], [augs[0].blocks, ()])
    np.testing.assert_allclose(got[1], model.encode(["a document"])[0], atol=1e-6)
    np.testing.assert_allclose(
        got[0], whole_string(model, texts[:1], [augs[0].pool_from], [augs[0].blocks])[0], atol=1e-5
    )


def test_other_architectures_are_refused_clearly():
    from transformers import MPNetConfig, MPNetModel

    tiny = MPNetModel(
        MPNetConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    with pytest.raises(BlockAttentionError, match="BERT-architecture"):
        bert_of([types.SimpleNamespace(auto_model=tiny)])


def test_packed_serving_batches_equal_the_models_own_pipeline(model):
    """encode_batch runs a mean-pooling BERT model packed: documents, raw and query-pooled queries in
    arrival order come out as the sentence-transformers pipeline and the query-pooling path make them."""
    from rare.encoding import encode_batch, token_lengths

    assert model.packable
    aug = QueryAugmenter(model, pooling="query")
    pooled = aug.build("does vitamin d prevent fractures", EXAMPLES[:2], None)
    texts = ["short", "a much longer document about proteins and cells in mice " * 12, pooled.text, "mid one"]
    starts = [0, 0, pooled.pool_from, 0]
    got = encode_batch(model, texts, [int(x) for x in token_lengths(model, texts)], starts, [()] * 4)
    plain = [0, 1, 3]
    np.testing.assert_allclose(
        got[plain], model.st.encode([texts[i] for i in plain], normalize_embeddings=True), atol=1e-5
    )
    np.testing.assert_allclose(got[2], model.encode([pooled.text], [pooled.pool_from])[0], atol=1e-5)


def test_attention_groups_split_rows_of_different_sizes_only_when_it_pays():
    # Row i: (own query tokens, keys = context + own). Two short plain queries, two long 5-example ones.
    queries, keys = [20, 25, 22, 18], [40, 45, 240, 230]
    groups = attention_groups(queries, keys, call_pairs=2048)
    assert sorted(int(i) for g in groups for i in g) == [0, 1, 2, 3]  # every row once
    assert [sorted(g.tolist()) for g in groups] == [[0, 1], [2, 3]]
    # Splitting saves 2 x 25 x (240 - 45) pairs; a call costing more than that keeps one group.
    assert len(attention_groups(queries, keys, call_pairs=20_000)) == 1
    assert [g.tolist() for g in attention_groups([7], [30])] == [[0]]


def test_grouped_attention_equals_the_training_forward(model):
    """A serving batch mixing plain and example-laden queries of every length runs as several attention
    groups and still gives each query its whole-string embedding."""
    aug = QueryAugmenter(model, attention="block")
    augs = [
        aug.build("insulin " * n, EXAMPLES[:k], None) for n, k in [(1, 0), (30, 5), (3, 0), (12, 2), (2, 5)]
    ]
    args = ([a.text for a in augs], [a.pool_from for a in augs], [a.blocks for a in augs])
    enc = BlockEncoder(model.st)
    assert len(enc._attention_groups(enc._rows(*args, model.max_tokens))) > 1
    got = enc.encode(*args, model.max_tokens)
    np.testing.assert_allclose(got, whole_string(model, *args), atol=1e-5)


def test_a_bfloat16_model_serves_block_texts_close_to_float32(model):
    from rare.model import load_model

    half = load_model(None, "cpu", "bfloat16")
    augs = augmented(model)
    args = ([a.text for a in augs], [a.pool_from for a in augs], [a.blocks for a in augs])
    got = half.encode(*args)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert (got * whole_string(model, *args)).sum(1).min() > 0.99
    # Cached keys and values in 16 bits: an example takes half the cache it takes in float32.
    caches = [BlockEncoder(m.st) for m in (half, model)]
    for c in caches:
        c.encode(*args, model.max_tokens)
    assert caches[0].stats()["entries"] == caches[1].stats()["entries"] == 7
    assert caches[0].stats()["bytes"] * 2 == caches[1].stats()["bytes"]


def test_prepacked_bfloat16_linears_change_nothing_but_rounding(model):
    from rare.model import load_model

    half = load_model(None, "cpu", "bfloat16")
    augs = augmented(model)
    args = ([a.text for a in augs], [a.pool_from for a in augs], [a.blocks for a in augs], model.max_tokens)
    packed, plain = BlockEncoder(half.st), BlockEncoder(half.st)
    assert packed.linear is not plain_linear  # the dense layers go through oneDNN's prepacked weights
    plain.linear = plain_linear
    # The same products, but oneDNN may block the sums differently: bf16 rounding apart, no more.
    got, ref = packed.encode(*args), plain.encode(*args)
    assert (got * ref).sum(1).min() > 0.9999, (got * ref).sum(1)
    assert BlockEncoder(model.st).linear is plain_linear  # float32: the modules themselves


def test_blocks_tokenized_apart_equal_the_whole_strings_tokens(model):
    """A structured row built from each block's own token ids (the examples' from a cache) equals the
    row cut from one tokenization of the whole string, odd text included: served embeddings stay the
    same bit for bit."""
    from rare.prompt import encode_columns
    from tests.rare.odd_builds import random_builds

    aug = QueryAugmenter(model, attention="block", example_doc_tokens=24)
    enc = BlockEncoder(model.st, counter=model.token_counter)
    builds = [a for a in random_builds(aug.build, 200) if a.blocks]
    texts, _, pool_from, blocks = encode_columns(builds)
    whole = enc._tokenized_rows(texts, pool_from, blocks, model.max_tokens)
    for _ in range(2):  # the second time, every prefix and example from the cache
        apart = [enc._block_row(*row, model.max_tokens) for row in zip(texts, pool_from, blocks, strict=True)]
        assert all(r is not None for r in apart)
        for i, (w, a) in enumerate(zip(whole, apart, strict=True)):
            assert a[0] == w[0] and a[3] == w[3], (i, texts[i])
            assert torch.equal(a[1], w[1]) and torch.equal(a[2], w[2]), (i, texts[i])
    assert len(builds) > 150 and sum(len(w[0]) > 2 for w in whole) > 100  # rows with examples
    # Over the length limit the whole-string path decides (it truncates): no row from blocks.
    assert enc._block_row(texts[0], pool_from[0], blocks[0], 8) is None
    # A whole batch through `_rows`: the blocks' rows where they apply, the same embeddings as before.
    assert [r[3] for r in enc._rows(texts[:20], pool_from[:20], blocks[:20], model.max_tokens)] == [
        w[3] for w in whole[:20]
    ]
