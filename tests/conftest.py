"""Shared fixtures: the real bundled model (loaded once), a tiny BEIR fixture, real servers on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

# The suite compares server, worker and in-process embeddings to 1e-4 and below: float32 everywhere,
# servers and `rare` subprocesses included, unless a test asks for another format (test_dtype.py).
os.environ.setdefault("RARE_DTYPE", "float32")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "sample" / "tiny"
SHARED = ROOT.parent / "shared" / "data" / "beir"


@pytest.fixture(scope="session")
def model():
    from rare.model import load_model

    return load_model(None, "cpu")


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


def shared_dataset(name: str) -> Path:
    path = SHARED / name
    if not (path / "queries.jsonl").is_file():
        pytest.skip(f"shared BEIR data not found at {path} (it lives beside the checkout in ../shared)")
    return path


@pytest.fixture(scope="session")
def tiny_collection_dir(tmp_path_factory, model) -> Path:
    """A data dir holding collection 'tiny' built from the fixture (copy it before writing)."""
    from rare.indexer import index_beir

    data = tmp_path_factory.mktemp("tinydata")
    index_beir(data, "tiny", model, TINY, show_progress=False)
    return data


@pytest.fixture
def data_dir(tmp_path, tiny_collection_dir) -> Path:
    """A private writable copy of the tiny collection's data dir."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_collection_dir, dst, ignore=shutil.ignore_patterns("LOCK"))
    return dst


@pytest.fixture
def block_model_dir(tmp_path, model) -> Path:
    """The bundled model's weights, saved as a RARe model with block attention (k=2, query pooling)."""
    from rare.model import RareConfig

    path = tmp_path / "block-model"
    shutil.copytree(model.path, path)
    RareConfig(k=2, attention="block", pooling="query", trained=True).save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    data_dir: Path,
    log: Path,
    *,
    env: dict | None = None,
    args: list[str] | None = None,
    wait_ready: bool = True,
) -> Server:
    port = free_port()
    # One in-process encoder unless a test asks for worker processes: each worker costs ~5 s to start.
    full_env = {
        **os.environ,
        "RARE_DATA_DIR": str(data_dir),
        "RARE_DEVICE": "cpu",
        "RARE_ENCODE_WORKERS": "1",
        **(env or {}),
    }
    fh = open(log, "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rare_cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *(args or []),
        ],
        env=full_env,
        stdout=fh,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.logs()[-3000:]}")
        try:
            r = httpx.get(server.url + ("/ready" if wait_ready else "/openapi.json"), timeout=2)
            if r.status_code == 200 or (not wait_ready and r.status_code < 500):
                return server
            if wait_ready and r.status_code == 503 and "degraded" in r.text:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server did not become ready:\n{server.logs()[-3000:]}")


def stop_server(server: Server, sig: int = signal.SIGTERM) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(sig)
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@contextmanager
def running_server(data_dir: Path, log: Path, **kw) -> Iterator[Server]:
    server = start_server(data_dir, log, **kw)
    try:
        yield server
    finally:
        stop_server(server)
