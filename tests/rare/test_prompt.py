import pytest

from rare.prompt import (
    DEFAULT_INSTRUCTION,
    Example,
    PromptBuilder,
    QueryTooLongError,
    ScoredExample,
    format_query,
)
from rare.query import QueryAugmenter

EX = [
    Example("a", "what do bees make", "Bees make honey."),  # most similar first
    Example("b", "where do bees live", "Bees live in hives."),
]


def scored(examples):
    return [ScoredExample(e, float(10 - i)) for i, e in enumerate(examples)]


def test_exact_string_byte_for_byte():
    got = format_query("how is honey made", EX, "Find documents")
    assert got == (
        "Instruct: Find documents\n"
        "Query: where do bees live\nPositive Document: Bees live in hives.\n\n"
        "Query: what do bees make\nPositive Document: Bees make honey.\n\n"
        "Query: how is honey made"
    )


def test_most_similar_example_is_last_before_the_query():
    got = format_query("q", EX, "t")
    assert got.rindex("what do bees make") > got.rindex("where do bees live")
    assert got.endswith("Positive Document: Bees make honey.\n\nQuery: q")


def test_plain_query_without_instruction_is_raw_and_default_instruction_used_with_examples():
    assert format_query("just this", [], None) == "just this"
    assert format_query("q", [], "t") == "Instruct: t\nQuery: q"
    assert format_query("q", EX[:1], None).startswith(f"Instruct: {DEFAULT_INSTRUCTION}\n")


def test_example_documents_capped_to_token_budget_at_word_boundary(model):
    b = PromptBuilder(model.tokenizer, 256, example_doc_tokens=8)
    doc = "A cat is a small domesticated carnivorous mammal with soft fur and sharp claws."
    capped = b.cap_document(doc)
    assert doc.startswith(capped) and len(capped) < len(doc)
    assert len(model.tokenizer(capped, add_special_tokens=False)["input_ids"]) <= 8
    assert not capped.endswith("car")  # never a half word
    assert b.cap_document("short text") == "short text"


def test_budget_drops_least_similar_first_and_never_cuts_the_query(model):
    long_doc = " ".join(f"word{i}" for i in range(300))
    exs = [Example(str(i), f"example query number {i}", long_doc) for i in range(6)]
    b = PromptBuilder(model.tokenizer, max_tokens=120, example_doc_tokens=40)
    query = "what is the final target query"
    out = b.build(query, scored(exs), "Find")
    assert out.tokens <= 120
    assert b.count(out.text) == out.tokens
    assert out.text.endswith(f"Query: {query}")
    kept = [s.example.id for s in out.examples]
    assert 0 < len(kept) < 6
    assert kept == [str(i) for i in range(len(kept))]  # a prefix of most-similar-first: the tail was dropped


def test_no_output_longer_than_model_max_tokens(model):
    aug = QueryAugmenter(model)
    doc = "lorem ipsum dolor sit amet " * 60
    exs = scored([Example(str(i), "lorem ipsum query " * 5, doc) for i in range(20)])
    out = aug.build("target", exs, "task")
    assert out.tokens <= model.max_tokens
    assert len(model.tokenizer(out.text)["input_ids"]) <= model.max_tokens
    assert out.text.endswith("Query: target")


def test_query_too_long_raises_instead_of_truncating(model):
    b = PromptBuilder(model.tokenizer, max_tokens=32, example_doc_tokens=8)
    with pytest.raises(QueryTooLongError) as err:
        b.build("word " * 100, scored(EX), "Find")
    assert err.value.limit == 32 and err.value.tokens > 32


def test_base_model_plain_is_raw_query_and_trained_model_always_instructs(model):
    aug = QueryAugmenter(model)
    assert aug.build("hello", [], "task").text == "hello"
    assert aug.build("hello", scored(EX[:1]), "task").text.startswith("Instruct: task\n")
    trained = QueryAugmenter(model, always_instruct=True)
    assert trained.build("hello", [], "task").text == "Instruct: task\nQuery: hello"


def test_summed_block_counts_equal_the_whole_strings_count(model):
    """The builder counts an augmented query as its bare query's tokens plus each block's cached count,
    without tokenizing the whole string, where the tokenizer splits at whitespace first (the bundled
    one): the sum must be the exact count, odd text included."""
    from tests.rare.odd_builds import random_builds

    b = PromptBuilder(model.token_counter, max_tokens=512, example_doc_tokens=24)
    assert b.counter.splits_at_whitespace
    for i, out in enumerate(random_builds(b.build, 200)):
        assert out.tokens == b.count(out.text), (i, out.text)
