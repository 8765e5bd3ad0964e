"""MCP servers never outlive chat, and start with clean signal state.

Each server chat starts carries a marker of the test's own in its argv; the tests look for it
in /proc before, while and after each way of ending chat.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from tests.chat_support import PROMPT_READY, ROOT, chat_env, fake_server
from tests.fake_openai import FakeServer
from tests.support import wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

MCP_SERVER = ROOT / "tests" / "mcp_server.py"
ENDED_WITHIN_S = 3.0  # chat's exit, servers included (TERM, then KILL after 2 s)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server


@pytest.fixture
def marker() -> str:
    return f"mcp-test-{uuid.uuid4().hex}"


def marked(marker: str) -> list[int]:
    """The processes other than chat whose command line holds `marker`: the test's MCP
    servers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and b"chat_cli" not in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def mcp_flag(marker: str, *extra: str) -> str:
    return f"t={sys.executable} {MCP_SERVER} {' '.join(extra)} {marker}".replace("  ", " ")


def _ended(child: pexpect.spawn, seconds: float) -> None:
    wait_for(lambda: not child.isalive(), seconds, "chat to exit")


def _start_and_ready(child: pexpect.spawn, marker: str) -> None:
    child.expect(PROMPT_READY)
    child.send("/tools\r")
    child.expect("t: ready")
    child.expect(PROMPT_READY)
    assert len(marked(marker)) == 1


def _timed_out(child: pexpect.spawn, marker: str) -> None:
    _start_and_ready(child, marker)
    child.send('@fault:call slow {"seconds": 60}\r')
    child.expect(r"slow timed out after 0\.5 s")
    child.expect(PROMPT_READY)


def _cancelled(child: pexpect.spawn, marker: str) -> None:
    _start_and_ready(child, marker)
    child.send('@fault:call slow {"seconds": 60}\r')
    child.expect("⚙ slow")
    time.sleep(0.3)  # the call is under way in the server
    child.sendintr()
    child.expect("cancelled by the user")
    child.expect(PROMPT_READY)


def _starting(child: pexpect.spawn, marker: str) -> None:
    child.expect(PROMPT_READY)
    child.send("/tools\r")
    wait_for(lambda: marked(marker), 10, "the MCP server to be started")
    child.sendintr()  # while it is still starting (it sleeps first): chat stops waiting for it
    child.expect(r"skipped MCP servers still starting")
    child.expect(PROMPT_READY)


def _exit_command(child: pexpect.spawn) -> None:
    child.send("/exit\r")


def _ctrl_d(child: pexpect.spawn) -> None:
    child.sendcontrol("d")


def _sighup(child: pexpect.spawn) -> None:
    child.kill(signal.SIGHUP)


def _sigterm(child: pexpect.spawn) -> None:
    child.kill(signal.SIGTERM)


def _close_terminal(child: pexpect.spawn) -> None:
    child.ptyproc.fileobj.close()  # the kernel hangs up: SIGHUP to chat


BEFORE: dict[str, Callable[[pexpect.spawn, str], None]] = {
    "ready": _start_and_ready,
    "after a timed-out call": _timed_out,
    "after a cancelled call": _cancelled,
    "while it starts": _starting,
}
ENDING: dict[str, Callable[[pexpect.spawn], None]] = {
    "/exit": _exit_command,
    "Ctrl-D": _ctrl_d,
    "SIGHUP": _sighup,
    "SIGTERM": _sigterm,
    "terminal closed": _close_terminal,
}
CASES = [
    ("ready", "/exit"),
    ("ready", "SIGTERM"),
    ("after a timed-out call", "SIGHUP"),
    ("after a timed-out call", "SIGTERM"),
    ("after a timed-out call", "terminal closed"),
    ("after a cancelled call", "Ctrl-D"),
    ("after a cancelled call", "terminal closed"),
    ("while it starts", "Ctrl-D"),
    ("while it starts", "SIGTERM"),
]


@pytest.mark.parametrize(("before", "ending"), CASES)
def test_the_mcp_server_ends_with_chat(
    before: str,
    ending: str,
    fake: FakeServer,
    tmp_path: Path,
    marker: str,
    spawn_chat: Callable[..., pexpect.spawn],
) -> None:
    extra = ("--sleep", "30") if before == "while it starts" else ()
    assert marked(marker) == []
    child = spawn_chat(
        "-y", "--tool-timeout", "0.5", "--mcp", mcp_flag(marker, *extra),
        env=chat_env(tmp_path, fake.url),
    )  # fmt: skip
    BEFORE[before](child, marker)
    assert len(marked(marker)) == 1
    sent = time.monotonic()
    ENDING[ending](child)
    _ended(child, 10)
    took = time.monotonic() - sent
    assert marked(marker) == [], f"{before}, then {ending}: the MCP server outlived chat"
    assert took < ENDED_WITHIN_S, f"chat took {took:.1f} s to end"


def test_a_server_that_ignores_sigterm_is_killed(
    fake: FakeServer, tmp_path: Path, marker: str, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    stubborn = f"t=sh -c 'trap \"\" TERM; exec {sys.executable} {MCP_SERVER} {marker}'"
    child = spawn_chat(
        "-y", "--tool-timeout", "0.5", "--mcp", stubborn, env=chat_env(tmp_path, fake.url)
    )
    _timed_out(child, marker)  # busy: it does not see its stdin close either
    sent = time.monotonic()
    child.send("/exit\r")
    _ended(child, 15)
    took = time.monotonic() - sent
    assert marked(marker) == []
    assert 2.0 <= took < 2.0 + ENDED_WITHIN_S  # TERM, 2 s of grace, then KILL


def _one_shot(
    fake: FakeServer, tmp_path: Path, marker: str, *args: str, stdout: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_cli", "-y", "--mcp", mcp_flag(marker), *args],
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env=chat_env(tmp_path, fake.url),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_the_mcp_server_ends_with_a_one_shot(fake: FakeServer, tmp_path: Path, marker: str) -> None:
    started = time.monotonic()
    result = _one_shot(fake, tmp_path, marker, '@fault:call echo {"text": "hi"}')
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tool said: hi")
    assert marked(marker) == []
    assert took < 10


def test_the_mcp_server_ends_when_chat_fails_unexpectedly(
    fake: FakeServer, tmp_path: Path, marker: str
) -> None:
    # Writing the answer to a full disk is not a ChatError: the CLI edge's last resort.
    with open("/dev/full", "w") as full:
        question = '@fault:call echo {"text": "hi"}'
        result = _one_shot(fake, tmp_path, marker, question, stdout=full.fileno())
    assert result.returncode == 1
    assert "internal error" in result.stderr
    assert marked(marker) == []


def test_the_mcp_server_ends_when_chat_is_killed(
    fake: FakeServer, tmp_path: Path, marker: str, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    """SIGKILL leaves chat no say: the kernel sends the server SIGTERM (PR_SET_PDEATHSIG).
    A server busy with a call does not notice that its stdin closed."""
    child = spawn_chat(
        "-y", "--tool-timeout", "0.5", "--mcp", mcp_flag(marker), env=chat_env(tmp_path, fake.url)
    )
    _timed_out(child, marker)
    child.kill(signal.SIGKILL)
    wait_for(lambda: not marked(marker), 5, "the MCP server to end")


# SIGINT ignored and blocked, as a careless parent may leave them; then chat.
_CARELESS_PARENT = """\
import ctypes, os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
# and 32, the C library's own, which only the kernel's rt_sigaction sets (x86_64: 13)
ctypes.CDLL(None).syscall(13, 32, ctypes.byref((ctypes.c_ulong * 4)(1)), None, 8)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def test_the_mcp_server_starts_with_default_signals_and_an_empty_mask(
    fake: FakeServer, tmp_path: Path, marker: str
) -> None:
    status = tmp_path / "status"
    config = tmp_path / "chat.toml"
    # The shell keeps what it inherited; grep shows it, then the server takes the shell's place.
    script = 'grep -E "^Sig(Ign|Blk)" /proc/self/status > "$1"; exec "$2" "$3" "$4"'
    config.write_text(
        "[mcp.servers.t]\n"
        f"command = 'sh'\nargs = ['-c', '{script}', 'sh', '{status}', '{sys.executable}', "
        f"'{MCP_SERVER}', '{marker}']\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", _CARELESS_PARENT, "-m", "chat_cli", "-y", "--config", str(config),
         '@fault:call echo {"text": "hi"}'],
        capture_output=True, text=True, timeout=60, env=chat_env(tmp_path, fake.url),
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tool said: hi")
    assert status.read_text().split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16]


def test_a_command_that_does_not_exist_is_one_line(fake: FakeServer, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chat_cli", "--mcp", "x=no-such-command-here", "hi"],
        capture_output=True, text=True, timeout=60, env=chat_env(tmp_path, fake.url),
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    assert line == (
        "✗ MCP server x failed to start (cannot start no-such-command-here: No such file or "
        "directory); going on without its tools"
    )
