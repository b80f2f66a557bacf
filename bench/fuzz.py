"""Schema fuzzing with schemathesis against a live `rare serve` on loopback.

    pip install schemathesis && python bench/fuzz.py --max-examples 100

Generates requests for every operation of /openapi.json (with a valid API key, so writes get past auth)
and checks: no server errors, responses conform to their schemas, status codes and content types are
documented. Positive-data acceptance is not checked: schema-valid input can rightly be refused (a query
over the model's token limit, an unknown collection). Results: bench/results/fuzz.json and .md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, ROOT, start_server  # noqa: E402

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-examples", type=int, default=100, help="per operation")
    args = ap.parse_args()
    st = shutil.which("st") or shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if st is None:
        sys.exit("schemathesis is not installed: pip install schemathesis")

    from rare.indexer import index_beir
    from rare.model import load_model

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        index_beir(data, "default", load_model(None, "cpu"), ROOT / "sample" / "tiny", show_progress=False)
        # info: the access log is how requests and 5xx are counted
        env = {"RARE_API_KEY": "fuzz-key", "RARE_LOG_LEVEL": "info"}
        server, url = start_server(data, env, log=data / "server.log")
        try:
            t0 = time.perf_counter()
            run = subprocess.run(
                [
                    st,
                    "run",
                    f"{url}/openapi.json",
                    "--checks",
                    CHECKS,
                    "-n",
                    str(args.max_examples),
                    "-H",
                    "Authorization: Bearer fuzz-key",
                    "--no-color",
                    "--workers",
                    "2",
                    "--request-timeout",
                    "60",
                ],
                capture_output=True,
                text=True,
                cwd=tmp,
            )
            seconds = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(timeout=60)
        server_log = (data / "server.log").read_text(errors="replace")
    output = run.stdout + run.stderr
    requests = server_log.count('"logger": "rare.access"')
    five = len(re.findall(r'"status": 5\d\d', server_log))
    result = {
        "exit_code": run.returncode,
        "seconds": round(seconds, 1),
        "server_requests": requests,
        "server_5xx": five,
        "server_tracebacks": server_log.count("Traceback"),
        "summary": "\n".join(output.strip().splitlines()[-25:]),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fuzz.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "fuzz.md").write_text(
        f"schemathesis: exit {run.returncode}, {requests} requests seen by the server "
        f"in {result['seconds']} s, "
        f"{five} 5xx, {result['server_tracebacks']} tracebacks.\n\n```\n{result['summary']}\n```\n"
    )
    print(output[-6000:])
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}))
    sys.exit(run.returncode)


if __name__ == "__main__":
    main()
