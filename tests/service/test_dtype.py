"""A server in bfloat16 (RARE_DTYPE; `auto` picks it on a CPU with native bf16): its encode workers run the
model in that format, and its vectors stay unit cosines close to float32's."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from rare.encoding import encode_texts
from tests.conftest import ROOT, running_server


def test_a_bfloat16_server_searches_and_embeds_close_to_float32(data_dir, tmp_path, model):
    env = {"RARE_DTYPE": "bfloat16", "RARE_ENCODE_WORKERS": "2"}
    with running_server(data_dir, tmp_path / "server.log", env=env) as server, server.client() as http:
        info = http.get("/info").json()
        assert info["model"]["dtype"] == "bfloat16" and info["encode_workers"] == 2
        texts = ["which organ produces insulin", "how is a rainbow formed"]
        r = http.post("/embed", json={"texts": texts, "collection": "tiny"})
        assert r.status_code == 200, r.text
        got = np.array(r.json()["embeddings"])
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        ref = encode_texts(model, texts)
        assert (got * ref).sum(1).min() > 0.99
        assert np.abs(got - ref).max() > 5e-4  # the workers really ran bfloat16: float32 agrees to 1e-5
        r = http.post("/search", json={"query": texts[0], "collection": "tiny"})
        assert r.status_code == 200 and r.json()["results"][0]["id"] == "d10", r.text
        r = http.post(
            "/search", json={"query": "what makes volcanoes erupt", "collection": "tiny", "num_examples": 1}
        )
        assert r.status_code == 200 and r.json()["num_examples"] == 1, r.text


def test_a_dtype_the_device_cannot_run_is_refused_before_start(tmp_path):
    for flag, message in (("float16", "GPU only"), ("int8", "dtype")):
        r = subprocess.run(
            [sys.executable, "-m", "rare_cli.main", "serve", "--device", "cpu", "--dtype", flag],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={"RARE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
