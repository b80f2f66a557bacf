import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rare.collection import Collection, CollectionError, InvalidNameError, list_collections, validate_name
from rare.encoding import encode_texts
from rare.indexer import index_jsonl
from rare.model import RareConfig
from tests.conftest import ROOT

QUERY = "which organ produces insulin"


def search_ids(col, model, query=QUERY, k=3):
    return [i for i, _ in col.search(encode_texts(model, [query]), k)[0]]


def test_build_then_reload_in_a_new_process_gives_identical_results(data_dir, model):
    col = Collection.open(data_dir, "tiny", model)
    here = col.search(encode_texts(model, [QUERY]), 5)[0]
    col.close()
    assert here[0][0] == "d10"
    code = (
        "import json,sys; from pathlib import Path; from rare.model import load_model;"
        "from rare.collection import Collection; from rare.encoding import encode_texts;"
        "m=load_model(None,'cpu'); c=Collection.open(Path(sys.argv[1]),'tiny',m,writable=False);"
        "print(json.dumps(c.search(encode_texts(m,[sys.argv[2]]),5)[0]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(data_dir), QUERY],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert [i for i, _ in there] == [i for i, _ in here]
    np.testing.assert_allclose([s for _, s in there], [s for _, s in here], atol=1e-6)


def test_add_find_delete_and_upsert_survive_reopen(data_dir, model):
    col = Collection.open(data_dir, "tiny", model)
    doc = ("new1", "Pancreas", "Beta cells in the pancreas secrete insulin into the bloodstream.")
    col.upsert_documents([doc], encode_texts(model, [doc[2]]))
    assert "new1" in search_ids(col, model)
    assert col.delete_document("d10") and not col.delete_document("d10")
    assert "d10" not in search_ids(col, model, k=16)
    col.upsert_documents(
        [("d1", "Changed", "Totally about insulin and the pancreas now.")],
        encode_texts(model, ["Totally about insulin and the pancreas now."]),
    )
    col.close()
    col = Collection.open(data_dir, "tiny", model)  # replays the WAL
    ids = search_ids(col, model, k=16)
    assert "d10" not in ids and "new1" in ids and ids.count("d1") == 1
    assert col.document("d1").title == "Changed"
    col.save_snapshot()  # folds the tombstones into the index
    assert col.index.ntotal == len(col.docs) == 16  # 16 + new1 - d10
    col.close()
    assert "d10" not in search_ids(Collection.open(data_dir, "tiny", model, writable=False), model, k=16)


def test_examples_added_and_deleted(data_dir, model):
    col = Collection.open(data_dir, "tiny", model)
    assert len(col.examples) == 8
    from rare.prompt import Example

    col.upsert_examples([Example("e1", "which gland makes insulin", "The pancreas makes insulin.")])
    assert col.select_examples(["what gland makes insulin"], 1)[0][0].example.id == "e1"
    assert col.delete_example("e1")
    col.close()
    col = Collection.open(data_dir, "tiny", model)
    assert "e1" not in col.examples and len(col.examples) == 8


def test_model_mismatch_is_refused(data_dir, model, tmp_path):
    from rare.model import LoadedModel

    other = LoadedModel(st=model.st, name="other-model", path="x", device="cpu", rare=RareConfig())
    other.__dict__["fingerprint"] = "0" * 32
    with pytest.raises(
        CollectionError, match="was built with model 'all-MiniLM-L6-v2'.*loaded model is 'other-model'"
    ):
        Collection.open(data_dir, "tiny", other)


@pytest.mark.parametrize(
    "victim,expect",
    [
        ("docs.faiss", "docs.faiss is corrupt or truncated"),
        ("manifest.json", "manifest.json is unreadable or corrupt"),
        ("docs.jsonl", "snapshot files are corrupt"),
    ],
)
def test_corrupt_or_truncated_files_give_a_clear_error(data_dir, model, victim, expect):
    snap = (
        data_dir
        / "collections"
        / "tiny"
        / (data_dir / "collections" / "tiny" / "CURRENT").read_text().strip()
    )
    data = (snap / victim).read_bytes()
    (snap / victim).write_bytes(data[: len(data) // 2])
    with pytest.raises(CollectionError, match=expect):
        Collection.open(data_dir, "tiny", model)


def test_torn_wal_tail_is_dropped_but_acknowledged_writes_kept(data_dir, model):
    col = Collection.open(data_dir, "tiny", model)
    col.delete_document("d3")
    wal = col._wal_path()
    col.close()
    with open(wal, "ab") as fh:
        fh.write(b'{"op": "delete_doc", "id": "d4"')  # a crash mid-append: never acknowledged
    col = Collection.open(data_dir, "tiny", model)
    assert "d3" not in col.docs and "d4" in col.docs
    assert wal.read_bytes().endswith(b"}\n")


def test_crash_mid_write_leaves_the_old_collection_loadable(data_dir, model):
    """Kill -9 a process that keeps writing snapshots and WAL records; the collection always reloads."""
    code = (
        "import sys,itertools; from pathlib import Path; from rare.model import load_model;"
        "from rare.collection import Collection; from rare.encoding import encode_texts;"
        "m=load_model(None,'cpu'); c=Collection.open(Path(sys.argv[1]),'tiny',m); e=encode_texts(m,['x']);"
        "print('go',flush=True)\n"
        "for i in itertools.count():\n"
        "    c.upsert_documents([(f'k{i}','t','x')], e)\n"
        "    if i % 3 == 0: c.save_snapshot()\n"
        "    if i % 5 == 0: print(i, flush=True)\n"
    )
    for delay in (0.3, 0.9):
        p = subprocess.Popen([sys.executable, "-c", code, str(data_dir)], stdout=subprocess.PIPE, cwd=ROOT)
        assert p.stdout.readline().strip() == b"go"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        col = Collection.open(data_dir, "tiny", model)
        assert len(col.docs) >= 16 and "d10" in col.docs
        assert search_ids(col, model)[0] == "d10"
        col.close()


def test_second_writer_is_refused(data_dir, model):
    col = Collection.open(data_dir, "tiny", model)
    code = (
        "import sys; from pathlib import Path; from rare.model import load_model; "
        "from rare.collection import Collection, CollectionError\n"
        "try:\n    Collection.open(Path(sys.argv[1]),'tiny',load_model(None,'cpu'))\n"
        "except CollectionError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, cwd=ROOT
    )
    assert "being written by another process" in out.stdout
    col.close()


@pytest.mark.parametrize("spec", ["IVF4,Flat", "HNSW16"])
def test_other_index_specs(tmp_path, model, tiny_dir, spec):
    docs = tmp_path / "docs.jsonl"
    rows = [json.loads(line) for line in (tiny_dir / "corpus.jsonl").read_text().splitlines()]
    docs.write_text(
        "".join(json.dumps({"id": r["_id"], "title": r["title"], "text": r["text"]}) + "\n" for r in rows)
    )
    index_jsonl(tmp_path, "c", model, docs, index_spec=spec, show_progress=False)
    col = Collection.open(tmp_path, "c", model)
    assert col.search(encode_texts(model, [QUERY]), 1, nprobe=4, ef_search=32)[0][0][0] == "d10"
    col.delete_document("d10")
    assert "d10" not in search_ids(col, model, k=16)
    col.save_snapshot()
    assert "d10" not in search_ids(col, model, k=16)


def test_names_are_validated(tmp_path):
    for bad in ["../x", "a/b", "..", ".hidden", "", "x" * 65, "a..b"]:
        with pytest.raises(InvalidNameError):
            validate_name(bad)
    assert validate_name("scifact-v2.1_x") == "scifact-v2.1_x"
    assert list_collections(tmp_path) == []


def test_small_searches_run_on_one_faiss_thread_only_for_the_calling_thread():
    import threading

    import faiss

    from rare.faiss_index import SMALL_SEARCH_PAIRS, search_threads

    before = faiss.omp_get_max_threads()
    seen = {}

    def small_search() -> None:
        with search_threads(32, 5000):
            seen["inside"] = faiss.omp_get_max_threads()
        seen["after"] = faiss.omp_get_max_threads()

    t = threading.Thread(target=small_search)
    t.start()
    t.join()
    assert seen["inside"] == 1 and seen["after"] == before
    assert faiss.omp_get_max_threads() == before  # other threads keep their pool
    with search_threads(1, SMALL_SEARCH_PAIRS + 1):  # big searches keep every thread
        assert faiss.omp_get_max_threads() == before
