"""Metrics against hand-computed values, the leak-free k-fold pool, outputs, and --url parity."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from eval.metrics import evaluate
from eval.pools import eval_pool, fold_of
from eval.runner import EvalConfig, ServiceError, run_eval
from rare.beir_data import load_beir
from tests.conftest import running_server


def test_metrics_equal_hand_computed_values():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}}
    results = {
        "q1": {"x": 0.9, "a": 0.8, "y": 0.1},  # relevant at rank 2
        "q2": {"b": 0.9, "z": 0.5, "c": 0.4},  # relevant at ranks 1 and 3
    }
    m = evaluate(qrels, results)
    ndcg_q1 = 1 / math.log2(3)
    ndcg_q2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-4)
    assert m["ndcg@1"] == pytest.approx(0.5, abs=1e-4)
    assert m["mrr@10"] == pytest.approx((0.5 + 1.0) / 2, abs=1e-4)
    assert m["map@100"] == pytest.approx((0.5 + (1 + 2 / 3) / 2) / 2, abs=1e-4)
    assert m["recall@10"] == pytest.approx(1.0)


def test_kfold_pool_never_gives_a_query_its_own_pairs(tmp_path, tiny_dir):
    shutil.copytree(tiny_dir, tmp_path / "t")
    (tmp_path / "t" / "qrels" / "train.tsv").unlink()  # no train or dev split: k-fold over test
    ds = load_beir(tmp_path / "t")
    qids = sorted(ds.split("test"))
    pool = eval_pool(ds, "test", qids)
    assert pool.source == "kfold-test"
    for q in qids:
        ids = {e.id for e in pool.examples_for[q]}
        assert q not in ids
        assert all(fold_of(i) != fold_of(q) for i in ids)
    assert eval_pool(load_beir(tiny_dir), "test", qids).source == "train"


def test_eval_writes_table_json_and_png(tmp_path, tiny_dir):
    cfg = EvalConfig(
        beir=[tiny_dir],
        out=tmp_path / "out",
        data_dir=tmp_path,
        device="cpu",
        show_progress=False,
        num_examples=2,
    )
    table = run_eval(cfg)
    assert "| tiny | all-MiniLM-L6-v2 · plain | train |" in table
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["run"] for r in records] == ["plain", "rare", "random"]
    plain = records[0]
    assert plain["metrics"]["ndcg@10"] > 0.9 and plain["k"] == 0 and plain["queries"] == 8
    assert records[1]["k"] == 2 and records[1]["mean_examples"] > 0
    png = (tmp_path / "out" / "ndcg10.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (tmp_path / "out" / "results.md").read_text().startswith("| dataset |")
    # The corpus embeddings were cached: a second run re-encodes only queries.
    assert len(list((tmp_path / "cache").glob("tiny-*.npz"))) == 1


def test_url_mode_matches_in_process(tmp_path, tiny_dir, data_dir):
    local = run_eval(
        EvalConfig(
            beir=[tiny_dir],
            out=tmp_path / "a",
            data_dir=tmp_path,
            device="cpu",
            show_progress=False,
            runs=["plain", "rare"],
            num_examples=2,
        )
    )
    assert local
    with running_server(data_dir, tmp_path / "s.log") as srv:
        run_eval(
            EvalConfig(
                beir=[tiny_dir],
                out=tmp_path / "b",
                data_dir=tmp_path,
                url=srv.url,
                collection="tiny",
                runs=["plain", "rare"],
                num_examples=2,
                show_progress=False,
            )
        )
        # A collection the server lacks: its own 404 message, not a traceback.
        with pytest.raises(ServiceError, match="HTTP 404: collection 'missing' not found"):
            run_eval(
                EvalConfig(
                    beir=[tiny_dir],
                    out=tmp_path / "c",
                    url=srv.url,
                    collection="missing",
                    show_progress=False,
                )
            )
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [r["run"] for r in b] == ["plain", "rare"] and b[0]["mode"] == "url"
    for x, y in zip(a, b, strict=True):
        for metric, value in x["metrics"].items():
            assert y["metrics"][metric] == pytest.approx(value, abs=1e-3), (x["run"], metric)
        assert x["mean_examples"] == y["mean_examples"]


def test_unknown_run_is_rejected(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="unknown run"):
        run_eval(EvalConfig(beir=[tiny_dir], out=tmp_path, runs=["bogus"]))


def test_merge_combines_runs_with_deltas_against_the_base(tmp_path):
    from eval.report import merge

    def rec(model, trained, run, ndcg, split="test"):
        m = dict.fromkeys(["ndcg@10", "recall@100", "map@100", "mrr@10"], ndcg)
        return {
            "dataset": "d",
            "split": split,
            "model": model,
            "trained": trained,
            "run": run,
            "k": 0 if run == "plain" else 3,
            "pool": "train",
            "encode_seconds": 1.0,
            "metrics": m,
        }

    (tmp_path / "a.json").write_text(
        json.dumps([rec("tuned", True, "rare", 0.7), rec("tuned", True, "plain", 0.6)])
    )
    (tmp_path / "b.json").write_text(json.dumps([rec("base", False, "plain", 0.5)]))
    # A dev-split screening is kept apart, with its own base run.
    (tmp_path / "c.json").write_text(
        json.dumps([rec("tuned", True, "plain", 0.45, "dev"), rec("base", False, "plain", 0.4, "dev")])
    )
    table = merge([tmp_path / p for p in ("a.json", "b.json", "c.json")], tmp_path / "out").splitlines()
    assert table[2].startswith("| d | base · plain |") and table[2].endswith("| +0.00 | 1.0 |")
    assert table[3].startswith("| d | tuned · plain |") and "+10.00" in table[3]
    assert table[4].startswith("| d | tuned · rare (k=3) |") and "+20.00" in table[4]
    assert table[5].startswith("| d (dev) | base · plain |") and "+0.00" in table[5]
    assert table[6].startswith("| d (dev) | tuned · plain |") and "+5.00" in table[6]
    assert (tmp_path / "out" / "ndcg10.png").is_file()
