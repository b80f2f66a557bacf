"""Helpers shared by the bench scripts: a `rare serve` subprocess on a free loopback port, percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# BENCH_OUT: results from another kind of machine go beside, not over, the reference ones.
OUT = Path(os.environ.get("BENCH_OUT") or ROOT / "bench" / "results").resolve()


def write_results(stem: str, data: dict, lines: list[str]) -> None:
    """A bench's results: `<stem>.json` (the figures) and `<stem>.md` (the table, also printed) under OUT."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (OUT / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def raw_encode(model, augs: list, batch_size: int = 32) -> tuple[float, float]:
    """The benches' raw reference: in-process encode of augmented queries' strings to the embeddings the
    server gives them: sentence-transformers' `encode` (its defaults: batches of 32) where the model's own
    pipeline makes them; otherwise (query pooling, block attention) `LoadedModel.encode` over
    length-sorted batches of 32. Returns (wall seconds, CPU seconds of this process)."""
    from rare.prompt import encode_columns

    t, cpu = time.perf_counter(), time.process_time()
    if not any(a.pool_from or a.blocks for a in augs):
        model.st.encode([a.text for a in augs], normalize_embeddings=True, show_progress_bar=False)
    else:
        order = sorted(range(len(augs)), key=lambda i: -augs[i].tokens)
        for start in range(0, len(order), batch_size):
            texts, _, pool_from, blocks = encode_columns([augs[i] for i in order[start : start + batch_size]])
            model.encode(texts, pool_from, blocks)
    return time.perf_counter() - t, time.process_time() - cpu


def machine() -> dict:
    """What a result was measured on: runs on different CPUs are not comparable."""
    from rare.model import cpu_bf16_unit
    from service.encode_pool import usable_cpus

    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        name = next((line.partition(":")[2].strip() for line in f if line.startswith("model name")), name)
    return {"cpu": name, "cpus": usable_cpus(), "bf16_unit": cpu_bf16_unit()}


def machine_line(m: dict) -> str:
    return f"Machine: {m['cpu']}, {m['cpus']} CPUs, bf16 instructions: {m['bf16_unit'] or 'none'}."


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used, from /proc; 0.0 off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of a server process and of its child processes (the encode workers) so far."""
    children = 0.0
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                    children += cpu_seconds(int(entry.name))
    return cpu_seconds(pid), children


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


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client for load generation on the server's own machine.

    httpx spends about a millisecond of CPU per request; on 2 cores that is taken from the server and
    shows up as server slowness. This client does the least a client can (one connection, bytes in,
    status and body out), like wrk or oha would.
    """

    def __init__(self, url: str):
        host_port = url.split("://", 1)[1].rstrip("/")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawHttp:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self._writer.write(head + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if "content-length" not in headers:
            raise RuntimeError(f"response without Content-Length: {headers}")
        return status, await self._reader.readexactly(int(headers["content-length"]))


async def post_searches(
    url: str,
    bodies: list[bytes],
    n: int,
    concurrency: int,
    on_reply: Callable[[int, int, bytes], None] | None = None,
) -> list[float]:
    """Latencies (s) of `n` POST /search, the bodies cycled, from `concurrency` keep-alive connections;
    `on_reply(i, status, body)` sees each answer."""
    lat: list[float] = []
    todo = iter(range(n))

    async def worker() -> None:
        async with RawHttp(url) as http:
            for i in todo:
                t = time.perf_counter()
                status, body = await http.post("/search", bodies[i % len(bodies)])
                lat.append(time.perf_counter() - t)
                if on_reply is not None:
                    on_reply(i, status, body)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat


def ensure_collection(data_dir: Path, name: str, beir: Path, model: Callable[[], object]) -> None:
    """Index the BEIR folder `beir` into collection `name` unless it is there; `model()` gives the
    model, loaded only then."""
    from rare.collection import collections_root
    from rare.indexer import index_beir

    if not (collections_root(data_dir) / name / "CURRENT").is_file():
        print(f"building collection {name} ...", flush=True)
        index_beir(data_dir, name, model(), beir)
