"""`python -m terminal_server.healthcheck [--pid PID]`: exit 0 while the terminal server answers.

The image's HEALTHCHECK. The server's flags come from its command line in /proc (a port or
base path given as arguments count), the rest from the environment the container shares with
it; TLS is spoken when the server has a certificate. Any answer at the right path counts, so a
generated token (which the check cannot know) does not make a healthy server look broken.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .config import Config, ConfigError, load_config

PROC = Path("/proc")
# Statuses the guard itself answers with: the server is up, the check just has no token.
ALIVE = frozenset({200, 401, 403})


def server_args(cmdline: Sequence[str]) -> list[str] | None:
    """The server's own flags from a process's argv, or None when it is no terminal server."""
    for i, arg in enumerate(cmdline):
        if Path(arg).name == "mixvllm-terminal":
            return list(cmdline[i + 1 :])
        if arg == "-m" and cmdline[i + 1 : i + 2] == ["terminal_server"]:
            return list(cmdline[i + 2 :])
    return None


def _cmdline(pid: int) -> list[str]:
    raw = (PROC / str(pid) / "cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def servers() -> Iterator[tuple[int, list[str]]]:
    """(pid, flags) of every terminal server this user can see."""
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = server_args(_cmdline(int(entry.name)))
        except OSError:
            continue
        if args is not None:
            yield int(entry.name), args


def health_url(cfg: Config) -> str:
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(cfg.host, cfg.host)
    host = f"[{host}]" if ":" in host else host
    return f"{cfg.scheme}://{host}:{cfg.port}{cfg.base_path}healthz"


def probe(cfg: Config, timeout: float = 4.0) -> int:
    """The HTTP status the server answers /healthz with (the token sent when configured)."""
    headers = {"Authorization": f"Bearer {cfg.token}"} if cfg.token else {}
    request = urllib.request.Request(health_url(cfg), headers=headers)  # noqa: S310 - http(s) only
    # Its certificate names the public host, not loopback: only liveness is checked here.
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=tls) as response:  # noqa: S310
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def check(args: Sequence[str], env: Mapping[str, str]) -> str | None:
    """None when the server with these flags is healthy, else what is wrong."""
    try:
        cfg = load_config(args, env)
    except (ConfigError, SystemExit) as exc:
        return f"cannot read the server's configuration: {exc}"
    try:
        status = probe(cfg)
    except OSError as exc:
        return f"{health_url(cfg)}: {exc}"
    return None if status in ALIVE else f"{health_url(cfg)}: HTTP {status}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m terminal_server.healthcheck")
    parser.add_argument("--pid", type=int, help="check this server (default: every one found)")
    opts = parser.parse_args(argv)
    found = list(servers())
    if opts.pid is not None:
        found = [(pid, args) for pid, args in found if pid == opts.pid]
    if not found:
        print("healthcheck: no terminal server running", file=sys.stderr)
        return 1
    problems = [p for _, args in found if (p := check(args, os.environ)) is not None]
    for problem in problems:
        print(f"healthcheck: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
