import gzip
import shutil

import pytest

from rare.beir_data import DataError, load_beir, pool_split, ranked_positives
from rare.pool import pool_from_beir, pool_from_jsonl
from tests.conftest import shared_dataset


def test_tiny_fixture_loads_with_crlf_qrels(tiny_dir):
    assert b"\r\n" in (tiny_dir / "qrels" / "train.tsv").read_bytes()
    ds = load_beir(tiny_dir, ["train", "test"])
    assert len(ds.corpus) == 16 and len(ds.queries) == 16
    assert ds.split("train")["q1"] == {"d1": 1}
    assert pool_split(ds) == "train"


def test_gzipped_corpus(tmp_path, tiny_dir):
    shutil.copytree(tiny_dir, tmp_path / "t")
    src = tmp_path / "t" / "corpus.jsonl"
    (tmp_path / "t" / "corpus.jsonl.gz").write_bytes(gzip.compress(src.read_bytes()))
    src.unlink()
    assert len(load_beir(tmp_path / "t").corpus) == 16


def test_missing_files_and_dangling_ids_give_clear_errors(tmp_path, tiny_dir):
    with pytest.raises(DataError, match="BEIR folder not found"):
        load_beir(tmp_path / "nope")
    shutil.copytree(tiny_dir, tmp_path / "t")
    with pytest.raises(DataError, match=r"no qrels/dev.tsv \(splits here: test, train\)"):
        load_beir(tmp_path / "t", ["dev"])
    with open(tmp_path / "t" / "qrels" / "train.tsv", "a") as fh:
        fh.write("q1\tmissing-doc\t1\r\nghost\td1\t1\r\n")
    with pytest.raises(DataError, match="1 query ids not in queries.jsonl .* 1 doc ids not in the corpus"):
        load_beir(tmp_path / "t", ["train"])
    (tmp_path / "t" / "queries.jsonl").unlink()
    with pytest.raises(DataError, match="no queries.jsonl"):
        load_beir(tmp_path / "t")


def test_pool_takes_highest_graded_doc_ties_in_file_order(tmp_path, tiny_dir):
    shutil.copytree(tiny_dir, tmp_path / "t")
    qrels = tmp_path / "t" / "qrels" / "train.tsv"
    lines = qrels.read_text().splitlines()
    # q1: d9 (grade 2) outranks d1, listed first; q2: a d5/d2 tie, d5 listed first (not the smallest id).
    lines[1:3] = ["q1\td1\t1", "q1\td9\t2", "q2\td5\t1", "q2\td2\t1"]
    qrels.write_text("\r\n".join(lines) + "\r\n")
    ds = load_beir(tmp_path / "t")
    assert ranked_positives(ds.split("train")["q1"]) == ["d9", "d1"]
    assert ranked_positives({"a": 1, "b": 0, "c": 3, "d": 1}) == ["c", "a", "d"]
    pool = {e.id: e for e in pool_from_beir(ds, "train")}
    assert pool["q1"].document.startswith("Jet engines")
    assert pool["q2"].document.startswith("Vaccines")
    assert len(pool) == 8


def test_pool_from_jsonl(tmp_path):
    p = tmp_path / "ex.jsonl"
    p.write_text('{"query": "a?", "document": "A."}\n{"query": "b?", "document": "B.", "id": "mine"}\n')
    pool = pool_from_jsonl(p)
    assert [e.id for e in pool][1] == "mine" and pool[0].id.startswith("ex-")
    p.write_text('{"query": "a?"}\n')
    with pytest.raises(DataError, match="record 1 needs"):
        pool_from_jsonl(p)


@pytest.mark.slow
def test_shared_scifact_counts():
    ds = load_beir(shared_dataset("scifact"), ["train", "test"])
    assert len(ds.corpus) == 5183
    assert len(ds.queries) == 1109
    assert len(ds.split("test")) == 300
    assert len(ds.split("train")) == 809
