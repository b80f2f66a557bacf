"""Query pooling: the mask covers exactly the target query's tokens; everything else pools as before."""

from __future__ import annotations

import numpy as np
import pytest

from rare.model import RareConfig
from rare.pooling import tokenize_with_query_mask
from rare.prompt import Example, ScoredExample
from rare.query import QueryAugmenter, resolve_attention

QUERY = "Insulin resistance in obese mice"
EXAMPLES = [
    ScoredExample(Example("e1", "metformin and glucose", "Metformin lowers blood glucose in patients."), 2.0),
    ScoredExample(Example("e2", "diet and weight", "A high fat diet causes weight gain in rodents."), 1.0),
]


def test_mask_covers_only_the_target_query(model):
    aug = QueryAugmenter(model, pooling="query").build(QUERY, EXAMPLES, "Find studies")
    assert aug.text[aug.pool_from :] == QUERY and aug.pool_from == aug.query_start > 0
    enc, mask = tokenize_with_query_mask(model.tokenizer, [aug.text, QUERY], [aug.pool_from, 0], 256)
    pooled = enc["input_ids"][0][mask[0]].tolist()
    assert pooled == model.tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    # Start 0: every real token, special tokens included (the model's own mean pooling).
    assert mask[1].tolist() == enc["attention_mask"][1].bool().tolist()


def test_full_pooling_keeps_pool_from_zero(model):
    aug = QueryAugmenter(model, pooling="full").build(QUERY, EXAMPLES, "Find studies")
    assert aug.pool_from == 0 and aug.query_start > 0 and aug.blocks == ()  # and full attention


def test_attention_and_pooling_in_force(model, tmp_path):
    # A base model: block attention and query pooling where its architecture allows (the bundled one is
    # a BERT encoder with mean pooling), else full attention pooled over the whole string.
    assert (model.rare.trained, model.rare.attention, model.rare.pooling) == (False, "block", "query")
    assert (RareConfig.load(tmp_path).attention, RareConfig.load(tmp_path).pooling) == ("full", "full")
    assert resolve_attention(model) == ("block", "query")
    assert resolve_attention(model, pooling="query") == ("block", "query")
    assert resolve_attention(model, pooling="full") == ("full", "full")  # full pooling: full attention
    assert resolve_attention(model, attention="full") == ("full", "query")
    with pytest.raises(ValueError, match="attention .block. pools the target query"):
        resolve_attention(model, "block", "full")
    aug = QueryAugmenter(model).build(QUERY, EXAMPLES, "Find studies")
    assert len(aug.blocks) == 3 and aug.text[aug.pool_from :] == QUERY  # 2 examples, the query
    assert QueryAugmenter(model).build(QUERY, [], None).text == QUERY  # plain: the raw query


def test_encode_with_pool_from(model):
    aug = QueryAugmenter(model, pooling="query").build(QUERY, EXAMPLES, "Find studies")
    doc = "Obesity induces insulin resistance through inflammation of adipose tissue."
    mixed = model.encode([aug.text, doc], [aug.pool_from, 0])
    full = model.encode([aug.text, doc])
    # The document row is pooled as always, even in a batch with a query-pooled row.
    np.testing.assert_allclose(mixed[1], model.encode([doc])[0], atol=1e-5)
    np.testing.assert_allclose(model.encode([doc], [0]), model.encode([doc]), atol=1e-6)
    assert abs(float(np.linalg.norm(mixed[0])) - 1.0) < 1e-5
    # Pooled over the query's own tokens, the augmented query stays near the query alone; pooled over
    # the whole string, the examples pull it away.
    plain = model.encode([QUERY])[0]
    assert float(mixed[0] @ plain) > float(full[0] @ plain) + 0.1
