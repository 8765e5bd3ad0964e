"""A compose project the e2e tests start: its name, files, page URL and token, and the
`docker compose` calls they make on it. Needs a Docker engine (`make compose-test`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from .browser_support import ROOT

DOCKER = os.environ.get("MIXVLLM_DOCKER") or shutil.which("docker") or "docker"


def docker_available() -> bool:
    try:
        info = subprocess.run([DOCKER, "info"], capture_output=True, timeout=30, check=False)
        compose = subprocess.run(
            [DOCKER, "compose", "version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return info.returncode == 0 and compose.returncode == 0


def timed(what: str, started: float) -> None:
    """How long a step of compose-test took, on its log."""
    print(f"compose-test: {what}: {time.monotonic() - started:.0f} s", file=sys.stderr)


@dataclass(frozen=True)
class Stack:
    project: str
    files: tuple[str, ...]  # the -f arguments
    url: str
    token: str
    env: dict[str, str]

    def compose(
        self, *args: str, stdin: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOCKER, "compose", "-p", self.project, *self.files, *args], cwd=ROOT, env=self.env,
            input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", "--no-log-prefix", service).stdout

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of the project still there."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
            out = subprocess.run(
                [DOCKER, *kind, "-q", "--filter", label],
                capture_output=True, text=True, timeout=60, check=True,
            ).stdout.split()  # fmt: skip
            found += [f"{kind[0]} {x}" for x in out]
        return found
