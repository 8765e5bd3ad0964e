"""Per-user limits (team/limits.py) on real processes: what a session's child sets on itself
before exec, the cgroup it joins through an fd the server opened, and which memory limit a
server picks. Two real accounts under the limits: test_terminal_team_admin.py."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from terminal_server import processes
from terminal_server.session_user import SessionUser
from terminal_server.team import limits
from terminal_server.team.limits import ChildLimits, UserCgroups, UserLimits, parse_size
from tests.conftest import require
from tests.support import wait_for


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("4096", 4096), ("512M", 512 << 20), ("4G", 4 << 30), ("64MiB", 64 << 20),
     (" 2 gb ", 2 << 30), ("1t", 1 << 40)],
)  # fmt: skip
def test_sizes_read_as_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "1.5G", "4X", "G"])
def test_a_bad_size_is_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="must be a size such as 512M or 4G"):
        parse_size(text)


def test_no_limits_unless_sessions_run_as_the_users_accounts() -> None:
    none = UserLimits.build(64, 1 << 30, may_switch=False)
    assert (none.processes, none.memory, none.cgroups) == (0, 0, None)
    assert none.describe() == "per-user limits: no process limit (RLIMIT_NPROC), no memory limit"
    assert none.for_user("alice") == ChildLimits(0, 0, None)


def test_the_server_says_which_memory_limit_applies(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "mixvllm.terminal"):
        built = UserLimits.build(64, 256 << 20, may_switch=True)
    if built.cgroups is None:  # this machine: no delegated memory controller
        assert "memory per user: no cgroup (" in caplog.text
        assert built.describe().endswith(
            f"RLIMIT_DATA {256 << 20} bytes per process (no cgroup v2 delegation)"
        )
        assert built.for_user("alice") == ChildLimits(64, 256 << 20, None)
    else:
        assert f"memory.max {256 << 20} bytes per user (cgroup v2 under" in built.describe()


def test_a_cgroup_without_the_memory_controller_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io pids\n")
    with pytest.raises(OSError, match="the memory controller is not available"):
        UserCgroups.create(1 << 30, tmp_path)


def _nobody() -> SessionUser:
    entry = pwd.getpwnam("nobody")
    return SessionUser(entry.pw_name, entry.pw_uid, entry.pw_gid, "/")


@contextlib.contextmanager
def _session(limits_: ChildLimits, user: SessionUser) -> Iterator[subprocess.Popen[bytes]]:
    proc, master = processes.spawn(["sleep", "30"], {"PATH": "/usr/bin:/bin"}, "/", 24, 80,
                                   user=user, limits=limits_)  # fmt: skip
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def _limit(pid: int, name: str) -> str:
    text = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(rf"^{name}\s+(\S+)\s+(\S+)", text, re.MULTILINE)
    assert match is not None, name
    assert match.group(1) == match.group(2), "soft and hard: the user cannot raise it"
    return match.group(1)


def test_the_session_starts_under_its_rlimits_which_it_cannot_raise() -> None:
    require(os.geteuid() == 0, "root, to start a process as another uid")
    with _session(ChildLimits(processes=33, data=300 << 20), _nobody()) as proc:
        assert _limit(proc.pid, "Max processes") == "33"
        assert _limit(proc.pid, "Max data size") == str(300 << 20)


def test_the_child_joins_its_users_cgroup_before_exec_through_the_servers_fd() -> None:
    """The migration itself (no memory controller needed): the child, already the user's uid,
    writes to a cgroup.procs that root opened, and the kernel checks the opener's rights."""
    require(os.geteuid() == 0, "root")
    mount, own = limits._cgroup2_mount(), limits._own_cgroup()
    require(mount is not None and own is not None, "a cgroup v2 hierarchy")
    assert mount is not None and own is not None
    base = mount / own.lstrip("/")
    group = base / f"mixvllm-test-{secrets.token_hex(4)}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cgroup v2 not writable here: {exc.strerror}")
    try:
        fd = os.open(group / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        try:
            with _session(ChildLimits(cgroup_procs=fd), _nobody()) as proc:
                # Already there when exec ran: `sleep` is the child itself, after exec.
                cgroup = Path(f"/proc/{proc.pid}/cgroup").read_text()
                assert f"0::{own.rstrip('/')}/{group.name}\n" in cgroup
        finally:
            os.close(fd)
    finally:
        wait_for(lambda: not (group / "cgroup.procs").read_text().strip(), 10, "empty cgroup")
        group.rmdir()
