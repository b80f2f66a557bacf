"""Helpers shared by the bench scripts: a `rare serve` subprocess on a free loopback port, percentiles."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile_ms(xs: list[float], p: float) -> float:
    """Nearest-rank percentile of seconds, in milliseconds."""
    if not xs:
        return 0.0
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))], 1)


def start_server(
    data_dir: Path, env: dict[str, str], log: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """Start `rare serve` on 127.0.0.1 and wait until /ready answers 200 (at most two minutes)."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, "RARE_DATA_DIR": str(data_dir), "RARE_DEVICE": "cpu", **env}
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "rare_cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=full_env,
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready in two minutes")
