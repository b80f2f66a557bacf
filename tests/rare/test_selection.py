import pytest

from rare.encoding import encode_texts
from rare.prompt import Example
from rare.selection import make_selector

POOL = [
    Example("cats", "are cats good pets for small flats", "Cats adapt well to apartments."),
    Example("stocks", "why did the stock market crash today", "Markets fell on rate fears."),
    Example("photons", "what is quantum entanglement of photons", "Entangled photons share a state."),
    Example("bread", "how long should bread dough rise", "Let dough rise until doubled."),
    Example("dup", "why did the stock market crash today", "A duplicate query text."),
]


def ids(rows):
    return [[s.example.id for s in r] for r in rows]


def test_bm25_returns_the_true_nearest_query_first():
    sel = make_selector("bm25", POOL)
    got = sel.select(["photon entanglement", "rising bread dough", "are cats pets"], 1)
    assert ids(got) == [["photons"], ["bread"], ["cats"]]
    assert got[0][0].score > 0


def test_bm25_skips_queries_with_no_shared_term():
    assert ids(make_selector("bm25", POOL).select(["zebra xylophone"], 3)) == [[]]


def test_dense_returns_the_true_nearest_query_first(model):
    sel = make_selector("dense", POOL, embed=lambda t: encode_texts(model, t))
    got = sel.select(["kittens living in apartments", "equities plunged"], 2)
    assert got[0][0].example.id == "cats"
    assert got[1][0].example.id in {"stocks", "dup"}
    assert got[0][0].score >= got[0][1].score


def test_self_exclusion_by_id_and_identical_text():
    sel = make_selector("bm25", POOL)
    query = "why did the stock market crash today"
    plain = ids(sel.select([query], 2))[0]
    assert set(plain) == {"stocks", "dup"}
    by_id = ids(sel.select([query], 2, exclude=[{"stocks"}]))[0]
    assert "stocks" not in by_id and by_id[0] == "dup"
    by_text = ids(sel.select([query], 4, exclude_identical=True))[0]
    assert "stocks" not in by_text and "dup" not in by_text


def test_random_mode_is_seeded_and_order_independent():
    a = make_selector("random", POOL, seed=7)
    b = make_selector("random", POOL, seed=7)
    c = make_selector("random", POOL, seed=8)
    qs = [f"query {i}" for i in range(6)]
    assert ids(a.select(qs, 3)) == ids(b.select(list(reversed(qs)), 3))[::-1]
    assert ids(a.select(qs, 3)) != ids(c.select(qs, 3))
    assert all(len(set(r)) == 3 for r in ids(a.select(qs, 3)))


def test_k_zero_and_empty_pool():
    assert make_selector("bm25", POOL).select(["cats"], 0) == [[]]
    assert make_selector("bm25", []).select(["cats"], 3) == [[]]


def test_unknown_selector():
    with pytest.raises(ValueError, match="unknown selector"):
        make_selector("magic", POOL)
