from pathlib import Path

from rare.tokens import TokenCounter

try:
    from transformers.models.bert import BertTokenizerLegacy as SlowBertTokenizer  # transformers 5
except ImportError:  # transformers 4: BertTokenizer is the Python one
    from transformers import BertTokenizer as SlowBertTokenizer

TEXTS = [
    "how is honey made",
    "Instruct: Find documents\nQuery: what do bees make\nPositive Document: Bees make honey.\n\nQuery: q",
    "Ünïcödé — naïve café; 0-dimensional biomaterials (IL-6) show inductive properties.",
    "word " * 400,  # over the model's 256-token limit: counted whole, never truncated
]


def test_counts_and_offsets_equal_the_tokenizer_untruncated(model):
    tok = model.tokenizer
    counter = TokenCounter(tok)
    for text in TEXTS:
        want = tok(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        assert counter.ids(text) == want
        assert counter.count(text) == len(want)
        assert counter.count(text, special=False) == len(want) - 2  # [CLS] and [SEP]
        want_offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        assert [tuple(o) for o in counter.offsets(text)] == [tuple(o) for o in want_offsets["offset_mapping"]]
    assert counter.count(TEXTS[-1]) > 400
    assert counter.counts(TEXTS) == [counter.count(t) for t in TEXTS]
    assert counter.counts([]) == []


def test_the_shared_tokenizers_truncation_state_does_not_leak_in(model):
    counter = TokenCounter(model.tokenizer)
    # A caller elsewhere leaves the shared backend truncating at 8 tokens.
    model.tokenizer(["a b c d e f g h i j k l"], truncation=True, max_length=8)
    assert counter.count(TEXTS[-1]) > 400
    assert model.token_counter.count(TEXTS[-1]) > 400


def test_a_slow_tokenizer_counts_the_same(model):
    slow = SlowBertTokenizer(str(Path(model.path) / "vocab.txt"))
    assert not slow.is_fast
    fast, counter = TokenCounter(model.tokenizer), TokenCounter(slow)
    for text in TEXTS:
        assert counter.count(text) == fast.count(text)
    assert counter.counts(TEXTS) == fast.counts(TEXTS)
