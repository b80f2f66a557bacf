"""Writes survive restarts and kill -9; concurrent writes and searches lose nothing; broken collections
are refused."""

from __future__ import annotations

import asyncio
import signal

import httpx

from tests.conftest import running_server, start_server, stop_server


async def _mixed_load(url: str, n: int) -> tuple[set[str], list[int]]:
    acked: set[str] = set()
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def write(i: int):
            r = await c.post(
                "/collections/tiny/documents",
                json=[{"id": f"w{i}", "title": "t", "text": f"written document number {i} about cats"}],
            )
            statuses.append(r.status_code)
            if r.status_code == 200:
                acked.add(f"w{i}")

        async def search(i: int):
            r = await c.post(
                "/search", json={"query": f"document number {i}", "collection": "tiny", "num_examples": i % 3}
            )
            statuses.append(r.status_code)

        await asyncio.gather(*(f(i) for i in range(n) for f in (write, search)))
    return acked, statuses


def _doc_ids(c: httpx.Client) -> set[str]:
    r = c.post("/search", json={"query": "written document about cats", "collection": "tiny", "top_k": 1000})
    assert r.status_code == 200, r.text
    return {h["id"] for h in r.json()["results"]}


def test_concurrent_writes_and_searches_lose_nothing_and_survive_kill_9(tmp_path, data_dir):
    srv = start_server(data_dir, tmp_path / "a.log")
    try:
        acked, statuses = asyncio.run(_mixed_load(srv.url, 30))
        assert set(statuses) == {200}, statuses
        assert len(acked) == 30
        with srv.client() as c:
            assert acked <= _doc_ids(c)
            assert c.delete("/collections/tiny/documents/d10").status_code == 200
            ex = c.post("/collections/tiny/examples", json=[{"query": "is a kettle hot", "document": "Yes."}])
            assert ex.status_code == 200
    finally:
        stop_server(srv, signal.SIGKILL)  # no graceful shutdown: only fsync'd writes count

    with running_server(data_dir, tmp_path / "b.log") as srv2, srv2.client() as c:
        assert c.get("/ready").status_code == 200
        ids = _doc_ids(c)
        assert acked <= ids and "d10" not in ids
        assert c.get("/collections").json()["collections"][0]["examples"] == 9


def test_graceful_restart_keeps_writes(tmp_path, data_dir):
    with running_server(data_dir, tmp_path / "a.log") as srv, srv.client() as c:
        assert (
            c.post(
                "/collections/fresh/documents", json=[{"id": "x", "text": "brand new collection"}]
            ).status_code
            == 200
        )
    with running_server(data_dir, tmp_path / "b.log") as srv, srv.client() as c:
        r = c.post("/search", json={"query": "new collection", "collection": "fresh"})
        assert r.status_code == 200 and r.json()["results"][0]["id"] == "x"


def test_broken_collection_is_refused_and_reported(tmp_path, data_dir):
    col = data_dir / "collections" / "tiny"
    snap = col / (col / "CURRENT").read_text().strip()
    (snap / "docs.faiss").write_bytes(b"garbage")
    with running_server(data_dir, tmp_path / "a.log") as srv, srv.client() as c:
        r = c.get("/ready")
        assert r.status_code == 503 and "docs.faiss is corrupt" in r.json()["detail"]
        r = c.post("/search", json={"query": "x", "collection": "tiny"})
        assert r.status_code == 503 and "unavailable" in r.json()["detail"]
        assert c.get("/health").status_code == 200  # the process itself is fine
        assert "collection 'tiny' refused" in srv.logs()
        assert "Traceback" not in srv.logs()
