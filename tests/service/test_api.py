"""A real `rare serve` on a free loopback port, the real model and a real FAISS index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rare.beir_data import load_beir
from rare.encoding import encode_texts
from rare.pool import pool_from_beir
from rare.selection import make_selector
from tests.conftest import running_server, start_server, stop_server

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_collection_dir):
    import shutil

    data = tmp_path_factory.mktemp("srv") / "data"
    shutil.copytree(tiny_collection_dir, data)
    srv = start_server(
        data,
        data.parent / "server.log",
        # Two encode worker processes: the embedding tests below compare them with in-process encoding.
        env={
            "RARE_API_KEY": KEY,
            "RARE_MAX_BODY_BYTES": "20000",
            "RARE_MAX_QUEUE": "64",
            "RARE_ENCODE_WORKERS": "2",
        },
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


def test_search_returns_the_expected_document(http):
    r = http.post("/search", json={"query": "which organ produces insulin", "collection": "tiny", "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["id"] == "d10"
    assert body["results"][0]["title"] == "Insulin"
    assert body["examples"] == [] and body["num_examples"] == 0  # base model: plain by default
    assert len(body["results"]) == 3 and body["took_ms"] > 0


def test_examples_used_are_returned_and_are_the_nearest_pool_queries(http, tiny_dir):
    query = "why do volcanoes erupt lava"
    r = http.post("/search", json={"query": query, "collection": "tiny", "num_examples": 2})
    assert r.status_code == 200, r.text
    used = r.json()["examples"]
    pool = pool_from_beir(load_beir(tiny_dir), "train")
    expected = make_selector("bm25", pool).select([query], 2)[0]
    assert [e["id"] for e in used] == [s.example.id for s in expected]
    assert used[0]["id"] == "q2" and used[0]["query"] == "what makes a volcano erupt"
    assert used[0]["score"] >= used[-1]["score"]


def test_concurrent_searches_each_get_their_own_nearest_examples(server, http, tiny_dir):
    """Example selection is batched across requests (one BM25 call for the largest k): each request
    still gets exactly its own k nearest pool queries."""
    from concurrent.futures import ThreadPoolExecutor

    selector = make_selector("bm25", pool_from_beir(load_beir(tiny_dir), "train"))
    cases = [
        ("why do volcanoes erupt lava", 2),
        ("how is a rainbow formed", 1),
        ("which organ produces insulin", 3),
        ("what makes a volcano erupt", 1),
    ] * 4

    def search(case):
        with server.client() as c:
            r = c.post("/search", json={"query": case[0], "collection": "tiny", "num_examples": case[1]})
            assert r.status_code == 200, r.text
            return r.json()["examples"]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(search, cases))
    for (query, k), used in zip(cases, got, strict=True):
        assert [e["id"] for e in used] == [s.example.id for s in selector.select([query], k)[0]]
    assert 'rare_batch_size_count{batcher="examples"}' in http.get("/metrics").text


def test_caller_supplied_examples_override_retrieval(http, model):
    from rare.beir_data import doc_text
    from rare.prompt import Example, ScoredExample
    from rare.query import QueryAugmenter
    from tests.rare.test_block_attention import whole_string

    ex = [{"query": "how do bees store honey", "document": "Bees store honey in wax combs."}]
    r = http.post("/search", json={"query": "honey storage", "collection": "tiny", "examples": ex})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [e["query"] for e in body["examples"]] == ["how do bees store honey"]
    assert body["examples"][0]["score"] is None
    assert body["results"][0]["id"] == "d3"
    # The bundled base model takes examples under block attention, pooled over the target query: the
    # scores are those of the whole string under the training-time block masks, in-process.
    info = http.get("/info").json()
    assert (info["rare"]["attention"], info["rare"]["pooling"]) == ("block", "query"), info["rare"]
    exs = [ScoredExample(Example("x", e["query"], e["document"]), 0.0) for e in ex]
    aug = QueryAugmenter(model).build("honey storage", exs, info["collections"]["tiny"]["instruction"])
    expected = whole_string(model, [aug.text], [aug.pool_from], [aug.blocks])[0]
    docs = encode_texts(model, [doc_text(h["title"], h["text"]) for h in body["results"]])
    np.testing.assert_allclose([h["score"] for h in body["results"]], docs @ expected, atol=1e-3)


def test_batch_search(http):
    body = {
        "queries": [
            {"query": "which organ produces insulin", "collection": "tiny"},
            {"query": "how is a rainbow formed", "collection": "tiny"},
            {"query": "what makes volcanoes erupt", "collection": "tiny", "num_examples": 1},
        ]
    }
    r = http.post("/search/batch", json=body)
    assert r.status_code == 200, r.text
    rs = r.json()["responses"]
    assert [x["results"][0]["id"] for x in rs[:2]] == ["d10", "d15"]
    assert [x["num_examples"] for x in rs] == [0, 0, 1]


def test_embed_matches_in_process_encoding(http, model):
    texts = ["Glaciers form from snow", "Rainbows need sunlight"]
    for kind in ("document", "query"):
        r = http.post("/embed", json={"texts": texts, "type": kind, "collection": "tiny"})
        assert r.status_code == 200, r.text
        got = np.array(r.json()["embeddings"])
        np.testing.assert_allclose(got, encode_texts(model, texts), atol=1e-4)
    r = http.post("/embed", json={"texts": ["volcano lava"], "num_examples": 1, "collection": "tiny"})
    assert r.status_code == 200 and r.json()["tokens"] > 5


def test_openai_client_gets_the_same_embeddings(server, model):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    texts = ["Insulin is a hormone", "Tides follow the Moon"]
    ref = encode_texts(model, texts)
    got = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # the client asks for base64
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), ref, atol=1e-4)
    assert got.usage.prompt_tokens > 0
    got = client.embeddings.create(model="x", input="Insulin is a hormone", encoding_format="float")
    np.testing.assert_allclose(got.data[0].embedding, ref[0], atol=1e-4)


def test_auth_required_for_every_write(http):
    doc = [{"id": "z", "text": "zzz"}]
    ex = [{"query": "q", "document": "d"}]
    calls = [
        ("POST", "/collections/tiny/documents", doc),
        ("DELETE", "/collections/tiny/documents/d1", None),
        ("POST", "/collections/tiny/examples", ex),
        ("DELETE", "/collections/tiny/examples/q1", None),
    ]
    for method, path, body in calls:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = http.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["detail"] == "missing or invalid API key"
    r = http.post("/collections/tiny/examples", json=ex, headers=AUTH)
    assert r.status_code == 200 and r.json()["ids"][0].startswith("ex-")
    assert http.delete(f"/collections/tiny/examples/{r.json()['ids'][0]}", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"query": ""}, 422, "at least 1 character"),
        ({"query": "   ", "collection": "tiny"}, 422, "must not be empty"),
        ({"query": "x", "collection": "tiny", "top_k": 0}, 422, "greater than or equal to 1"),
        ({"query": "x", "collection": "tiny", "top_k": 5000}, 422, "top_k must be at most 1000"),
        ({"query": "x", "collection": "nope"}, 404, "collection 'nope' not found"),
        ({"query": "x", "collection": "../etc"}, 422, "invalid collection name"),
        ({"query": "x", "collection": "tiny", "topk": 3}, 422, "Extra inputs are not permitted"),
        ({"query": "word " * 400, "collection": "tiny"}, 422, "the model allows 256"),
        ({"query": "x", "collection": "tiny", "num_examples": 99}, 422, "less than or equal to 32"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_message(http, body, status, fragment):
    r = http.post("/search", json=body)
    assert r.status_code == status, r.text
    assert fragment in r.text
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"input": [], "model": "m"}, "1 to 2048 strings"),
        ({"input": [[101, 2054]], "model": "m"}, "token arrays are not supported"),
        ({"input": 101, "model": "m"}, "token arrays are not supported"),
        ({"input": "x", "model": "m", "dimensions": 10}, "have 384 dimensions"),
        ({"input": "x", "model": "m", "encoding_format": "int8"}, "'float' or 'base64'"),
    ],
)
def test_openai_embeddings_bad_input(http, body, fragment):
    r = http.post("/v1/embeddings", json=body)
    assert r.status_code == 422 and fragment in r.text, r.text


def test_openai_embeddings_accept_the_models_own_dimensions(http):
    ok = http.post("/v1/embeddings", json={"input": "x", "model": "m", "dimensions": 384})
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 384


def test_malformed_json_and_oversize_body(http):
    r = http.post("/search", content=b"{bad json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON decode error" in r.text
    r = http.post(
        "/search", content=b'{"query": "x"}', headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415 and "Content-Type: application/json" in r.text
    r = http.post("/search", json={"query": "x" * 30000, "collection": "tiny"})
    assert r.status_code == 413 and "over 20000 bytes" in r.text


def test_ops_endpoints(http):
    assert http.post("/search", json={"query": "insulin", "collection": "tiny"}).status_code == 200
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").json() == {"status": "ready"}
    info = http.get("/info").json()
    assert info["model"]["dim"] == 384 and info["collections"]["tiny"]["documents"] >= 16
    assert info["rare"]["default_num_examples"] == 0 and info["encode_workers"] == 2
    metrics = http.get("/metrics").text
    assert 'rare_requests_total{endpoint="/search",method="POST",status="200"}' in metrics
    assert "rare_request_duration_seconds_bucket" in metrics and "rare_batch_size_bucket" in metrics
    assert 'rare_tokens_total{kind="query"}' in metrics
    # The start-up heap is out of the collector's full collections (service.heap).
    frozen = next(line for line in metrics.splitlines() if line.startswith("rare_gc_frozen_objects "))
    assert float(frozen.split()[1]) > 10_000
    cols = http.get("/collections").json()
    assert [c["name"] for c in cols["collections"]] == ["tiny"] and cols["unavailable"] == {}
    assert http.get("/openapi.json").status_code == 200


def test_structured_log_line_per_request(server, http):
    http.get("/ready")
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    access = [x for x in lines if x.get("logger") == "rare.access"]
    assert access and {"method", "path", "status", "ms"} <= set(access[-1])


def test_backpressure_answers_429_not_a_hang(tmp_path, data_dir):
    with running_server(data_dir, tmp_path / "s.log", env={"RARE_MAX_QUEUE": "4"}) as srv, srv.client() as c:
        ok = c.post("/embed", json={"texts": ["a"] * 4, "type": "document"})
        assert ok.status_code == 200
        r = c.post("/embed", json={"texts": ["a"] * 5, "type": "document"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "queue is full" in r.json()["detail"]


def test_read_auth_when_configured(tmp_path, data_dir):
    env = {"RARE_API_KEY": KEY, "RARE_AUTH_READS": "true"}
    with running_server(data_dir, tmp_path / "s.log", env=env) as srv, srv.client() as c:
        assert c.post("/search", json={"query": "x", "collection": "tiny"}).status_code == 401
        assert c.post("/search", json={"query": "x", "collection": "tiny"}, headers=AUTH).status_code == 200
        assert c.get("/health").status_code == 200  # probes stay open


def test_cors_is_closed_by_default(http):
    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = http.options("/search", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    r = http.post(
        "/search", json={"query": "x", "collection": "tiny"}, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_query_pooling_setting_reaches_search(tmp_path, data_dir, model):
    from rare.beir_data import doc_text
    from rare.prompt import Example, ScoredExample
    from rare.query import QueryAugmenter

    query = "volcano lava"
    given = [{"query": "How do volcanoes erupt", "document": "Magma rises through the crust as lava."}]
    with (
        running_server(
            data_dir, tmp_path / "s.log", env={"RARE_POOLING": "query", "RARE_ATTENTION": "full"}
        ) as srv,
        srv.client() as c,
    ):
        info = c.get("/info").json()
        r = c.post("/search", json={"query": query, "collection": "tiny", "top_k": 5, "examples": given})
    assert (info["rare"]["pooling"], info["rare"]["attention"]) == ("query", "full"), info["rare"]
    assert r.status_code == 200, r.text
    exs = [ScoredExample(Example("x", g["query"], g["document"]), 0.0) for g in given]
    aug = QueryAugmenter(model, pooling="query", attention="full").build(
        query, exs, info["collections"]["tiny"]["instruction"]
    )
    assert aug.blocks == ()
    pooled, full = model.encode([aug.text], [aug.pool_from])[0], model.encode([aug.text])[0]
    hits = r.json()["results"]
    docs = encode_texts(model, [doc_text(h["title"], h["text"]) for h in hits])
    np.testing.assert_allclose([h["score"] for h in hits], docs @ pooled, atol=1e-3)
    assert np.abs(docs @ full - docs @ pooled).max() > 1e-2  # the two poolings are told apart


def cache_counts(client) -> tuple[float, float]:
    """(hits, misses) of the block-attention example cache, from /metrics."""
    lines = client.get("/metrics").text.splitlines()
    found = dict(line.split()[:2] for line in lines if line.startswith("rare_example_"))
    return float(found["rare_example_cache_hits_total"]), float(found["rare_example_cache_misses_total"])


@pytest.mark.parametrize(
    "trained, warm", [(True, True), (True, False), (False, True)], ids=["rare", "rare-no-warm", "base"]
)
def test_pool_examples_are_cached_before_the_server_is_ready(
    tmp_path, data_dir, block_model_dir, trained, warm
):
    """With warming on (the default) a search whose examples come from the pool computes none of
    them: start-up put every pool example into the cache; with it off, the search computes them. The
    bundled base model, plain by default though under block attention, is not warmed."""
    env = {"RARE_WARM_EXAMPLE_CACHE": str(warm).lower()}
    env |= {"RARE_MODEL": str(block_model_dir)} if trained else {}
    warm = warm and trained
    with running_server(data_dir, tmp_path / "s.log", env=env) as srv, srv.client() as c:
        pool = c.get("/info").json()["collections"]["tiny"]["examples"]
        before = cache_counts(c)
        r = c.post("/search", json={"query": "what makes insulin", "collection": "tiny", "num_examples": 2})
        after = cache_counts(c)
    assert r.status_code == 200 and r.json()["num_examples"] == 2, r.text
    if warm:
        assert before[1] == pool + 1, before  # every pool example and the instruction prefix
        assert after == (before[0] + 3, before[1]), (before, after)
    else:
        assert before == (0.0, 0.0) and after[1] == 3, (before, after)


def test_block_attention_model_serves_cached_examples(tmp_path, data_dir, model, block_model_dir):
    """A model that carries attention 'block' is served through the example cache, with scores equal
    to the whole-string block forward that training runs."""
    from rare.beir_data import doc_text
    from rare.prompt import Example, ScoredExample
    from rare.query import QueryAugmenter
    from tests.rare.test_block_attention import whole_string

    query = "volcano lava"
    given = [
        {"query": "How do volcanoes erupt", "document": "Magma rises through the crust as lava."},
        {"query": "What is basalt", "document": "Basalt is a rock formed from cooled lava."},
    ]
    env = {"RARE_MODEL": str(block_model_dir)}  # one encoder: both searches meet the same cache
    with running_server(data_dir, tmp_path / "s.log", env=env) as srv, srv.client() as c:
        info = c.get("/info").json()
        warmed = cache_counts(c)
        body = {"query": query, "collection": "tiny", "top_k": 5, "examples": given}
        r = c.post("/search", json=body)
        first = cache_counts(c)
        again = c.post("/search", json=body)
        second = cache_counts(c)
    assert info["rare"]["attention"] == "block" and info["rare"]["pooling"] == "query", info["rare"]
    assert r.status_code == 200 and again.json()["results"] == r.json()["results"], r.text
    # The instruction prefix was cached at start-up (with the pool); the caller's two examples were
    # computed by the first search and reused, with the prefix, by the second.
    assert warmed[1] >= 1 and first == (warmed[0] + 1, warmed[1] + 2), (warmed, first)
    assert second == (first[0] + 3, first[1]), (first, second)
    exs = [ScoredExample(Example("x", g["query"], g["document"]), 0.0) for g in given]
    aug = QueryAugmenter(model, attention="block").build(
        query, exs, info["collections"]["tiny"]["instruction"]
    )
    expected = whole_string(model, [aug.text], [aug.pool_from], [aug.blocks])[0]
    hits = r.json()["results"]
    docs = encode_texts(model, [doc_text(h["title"], h["text"]) for h in hits])
    np.testing.assert_allclose([h["score"] for h in hits], docs @ expected, atol=1e-3)
