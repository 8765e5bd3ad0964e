"""Render compose files with Docker Compose v2 itself (`docker compose config`), as a user's
command would, from a scratch copy of the repository root with its own `.env`.

No Docker engine is needed: `config` only reads, interpolates and merges the files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"VLLM_API_KEY": "key-from-dotenv", "MIXVLLM_TERMINAL_TOKEN": "token-from-dotenv",
           "PROXY_COOKIE_KEY": "cookie-key-from-dotenv"}  # fmt: skip


@cache
def compose_argv() -> tuple[str, ...] | None:
    """`docker compose` (the v2 plugin), else a v2 `docker-compose` on PATH."""
    for argv in (("docker", "compose"), ("docker-compose",)):
        if not shutil.which(argv[0]):
            continue
        done = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True,
                              timeout=30, check=False)  # fmt: skip
        if done.returncode == 0 and re.match(r"v?2\.", done.stdout.strip()):
            return argv
    return None


def require_compose() -> tuple[str, ...]:
    argv = compose_argv()
    require(argv is not None, "Docker Compose v2 (`docker compose`) is not installed")
    assert argv is not None
    return argv


def checkout(dest: Path, **dotenv: str) -> Path:
    """The files compose reads, copied to `dest` (made if missing), and a `.env` made from
    `.env.example` with the secrets filled in and `dotenv` overriding any other line."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in [*ROOT.glob("docker-compose*.yml"), *ROOT.glob("Dockerfile*"),
                 ROOT / ".env.example", ROOT / ".dockerignore"]:  # fmt: skip
        if path.is_file():
            shutil.copy(path, dest / path.name)
    shutil.copytree(ROOT / "deploy", dest / "deploy", dirs_exist_ok=True)
    values = {**SECRETS, **dotenv}
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values.pop(name)}" if "=" in line and name in values else line)
    lines += [f"{name}={value}" for name, value in values.items()]
    (dest / ".env").write_text("\n".join(lines) + "\n")
    return dest


def clean_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """Only what a shell needs: the test runner's own variables must not reach compose."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "DOCKER_CONFIG") if k in os.environ}
    return {**keep, **extra}


def shell(command: str, cwd: Path, env: Mapping[str, str] = {}) -> subprocess.CompletedProcess[str]:
    """Run a documented command line (with `VAR=value` prefixes) as a shell would."""
    argv = require_compose()
    command = re.sub(r"\bdocker compose\b", " ".join(argv), command)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=clean_env(env),
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def render(cwd: Path, *args: str, env: Mapping[str, str] = {}) -> dict[str, Any]:
    """`docker compose ARGS config --format json` in `cwd`, parsed."""
    argv = require_compose()
    done = subprocess.run([*argv, *args, "config", "--format", "json"], cwd=cwd,
                          env=clean_env(env), capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert isinstance(data, dict)
    return data
