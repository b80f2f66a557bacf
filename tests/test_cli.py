"""The console script: subcommands, flags mirroring settings, clear one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from rare.settings import Settings
from rare_cli.main import app
from tests.conftest import ROOT

runner = CliRunner()


def rare(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rare_cli.main", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_the_subcommands():
    out = runner.invoke(app, ["--help"]).output
    for cmd in ("index", "serve", "train", "merge", "eval"):
        assert f" {cmd} " in out


def test_serve_flags_mirror_every_setting():
    out = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in out, name
        assert f"RARE_{name.upper()}" in out, name


def test_env_vars_feed_settings_and_flags_win(monkeypatch, tmp_path):
    from rare.settings import get_settings

    monkeypatch.setenv("RARE_PORT", "9001")
    monkeypatch.setenv("RARE_DATA_DIR", str(tmp_path))
    s = get_settings(port=None, host="0.0.0.0")
    assert s.port == 9001 and s.host == "0.0.0.0" and s.data_dir == tmp_path
    assert get_settings(port=7000).port == 7000


def test_bad_setting_is_a_one_line_error():
    r = rare("serve", env={"RARE_PORT": "99999"})
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: port: Input should be less than or equal to 65535")


def test_missing_model_is_a_one_line_error_for_every_command(tmp_path):
    missing = tmp_path / "no-model"
    want = f"error: model not found: no directory at {missing}"
    for args in (
        ["serve", "--data-dir", str(tmp_path)],  # before uvicorn starts: no traceback in its log
        ["train", "--beir", str(ROOT / "sample" / "tiny"), "--output", str(tmp_path / "out")],
        ["eval", "--beir", str(ROOT / "sample" / "tiny"), "--out", str(tmp_path / "eval")],
    ):
        r = rare(*args, "--model", str(missing))
        assert (r.returncode, r.stderr.strip()) == (2, want), (args, r.stderr)


def test_conflicting_attention_and_pooling_is_a_one_line_error():
    r = rare("serve", "--attention", "block", "--pooling", "full")
    assert (r.returncode, r.stderr.strip()) == (
        2,
        "error: attention 'block' pools the target query: use pooling 'query' or attention 'full'",
    )


def test_bad_training_flag_is_a_one_line_error(tmp_path):
    r = rare("train", "--beir", str(ROOT / "sample" / "tiny"), "--output", str(tmp_path), "--k", "-1")
    assert (r.returncode, r.stderr.strip()) == (2, "error: k: Input should be greater than or equal to 0")


def test_eval_against_an_unreachable_service_is_a_one_line_error(tmp_path):
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    r = rare("eval", "--beir", str(ROOT / "sample" / "tiny"), "--url", url, "--out", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith(f"error: cannot reach the service at {url}"), r.stderr
    assert "Traceback" not in r.stderr


def test_index_errors_are_one_line(tmp_path):
    r = rare("index", "--beir", str(tmp_path / "missing"), "--data-dir", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == f"error: BEIR folder not found: {tmp_path / 'missing'}"
    r = rare("index", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "give either --beir" in r.stderr
    r = rare("index", "--documents", "x.jsonl", "--collection", "../evil", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "invalid collection name" in r.stderr


def test_index_jsonl_end_to_end_and_extend_encodes_only_new(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "title": "Cats", "text": "Cats purr."}\n{"id": "b", "text": "Dogs bark."}\n')
    ex = tmp_path / "ex.jsonl"
    ex.write_text('{"query": "do cats purr", "document": "Cats purr."}\n')
    r = rare(
        "index",
        "--documents",
        str(docs),
        "--examples",
        str(ex),
        "--collection",
        "pets",
        "--data-dir",
        str(tmp_path / "d"),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats == {"encoded": 2, "skipped": 0, "examples": 1, "documents": 2, "collection": "pets"}
    with open(docs, "a") as fh:
        fh.write('{"id": "c", "text": "Birds sing."}\n')
    r = rare(
        "index",
        "--documents",
        str(docs),
        "--collection",
        "pets",
        "--data-dir",
        str(tmp_path / "d"),
        "--quiet",
    )
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats["encoded"] == 1 and stats["skipped"] == 2 and stats["documents"] == 3
