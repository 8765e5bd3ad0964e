"""Per-user limits of team sessions that run as the user's own account: processes
(`RLIMIT_NPROC`) and memory (a cgroup v2 per user with `memory.max` when the server may create
cgroups, else `RLIMIT_DATA` on each process).

The rlimits are set in the session's child after its uid change and before exec, so the
user's program starts under them and cannot raise them. `RLIMIT_NPROC` counts every process
of the uid, the user's sessions together (and anything else that runs as that account).

A cgroup moves the session's leader before exec: the child writes to a `cgroup.procs` the
server opened (the kernel checks the opener's rights), so nothing it forks starts outside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mixvllm.terminal")

_SIZE_RE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
SERVER_LEAF = "mixvllm-server"  # the server's own processes, when it delegates to users
USER_PREFIX = "mixvllm-user-"


def parse_size(text: str) -> int:
    """Bytes from `4G`, `512M`, `64MiB`, `1048576` (binary units); `0` is none."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError("must be a size such as 512M or 4G (0: no limit)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class ChildLimits:
    """What one session's child applies to itself between its uid change and exec."""

    processes: int = 0  # RLIMIT_NPROC; 0: none
    data: int = 0  # RLIMIT_DATA; 0: none
    cgroup_procs: int | None = None  # an fd of the user's cgroup.procs, opened by the server

    def apply(self) -> None:  # runs in the forked child: system calls only
        if self.cgroup_procs is not None:
            with contextlib.suppress(OSError):  # the server moves it after the spawn then
                os.write(self.cgroup_procs, b"0")
        if self.processes:
            resource.setrlimit(resource.RLIMIT_NPROC, (self.processes, self.processes))
        if self.data:
            resource.setrlimit(resource.RLIMIT_DATA, (self.data, self.data))


def _cgroup2_mount() -> Path | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    return None


def _own_cgroup() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    return None


class UserCgroups:
    """A memory cgroup per user under the server's own (delegated) cgroup."""

    def __init__(self, base: Path, memory: int) -> None:
        self.base = base
        self.memory = memory

    @classmethod
    def create(cls, memory: int, base: Path | None = None) -> UserCgroups:
        """Set up delegation below `base` (the server's cgroup); raises OSError saying why not."""
        if base is None:
            mount, own = _cgroup2_mount(), _own_cgroup()
            if mount is None or own is None:
                raise OSError("no cgroup v2 hierarchy is mounted for this process")
            base = mount / own.lstrip("/")
        controllers = (base / "cgroup.controllers").read_text().split()
        if "memory" not in controllers:
            raise OSError(f"the memory controller is not available in {base}")
        if "memory" not in (base / "cgroup.subtree_control").read_text().split():
            # A cgroup with processes cannot hand controllers down: the server moves into a
            # leaf of its own first (what systemd's Delegate= expects a service to do).
            leaf = base / SERVER_LEAF
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
            (base / "cgroup.subtree_control").write_text("+memory")
        return cls(base, memory)

    def user_procs(self, name: str) -> int:
        """An fd of the user's cgroup.procs (the cgroup made and limited on first use)."""
        group = self.base / (USER_PREFIX + name)
        group.mkdir(exist_ok=True)
        (group / "memory.max").write_text(str(self.memory))
        with contextlib.suppress(OSError):  # no swap configured: no such file
            (group / "memory.swap.max").write_text("0")
        return os.open(group / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)


class UserLimits:
    """The limits every team session gets, built once at start; `describe` says which apply."""

    def __init__(self, processes: int, memory: int, cgroups: UserCgroups | None) -> None:
        self.processes = processes
        self.memory = memory
        self.cgroups = cgroups

    @classmethod
    def build(cls, processes: int, memory: int, *, may_switch: bool) -> UserLimits:
        """`may_switch`: sessions run as the users' accounts (a root server in team mode)."""
        if not may_switch:
            return cls(0, 0, None)
        cgroups = None
        if memory:
            try:
                cgroups = UserCgroups.create(memory)
            except OSError as exc:
                log.info("memory per user: no cgroup (%s)", exc.strerror or exc)
        return cls(processes, memory, cgroups)

    def describe(self) -> str:
        procs = f"{self.processes} processes" if self.processes else "no process limit"
        if not self.memory:
            mem = "no memory limit"
        elif self.cgroups is not None:
            mem = f"memory.max {self.memory} bytes per user (cgroup v2 under {self.cgroups.base})"
        else:
            mem = f"RLIMIT_DATA {self.memory} bytes per process (no cgroup v2 delegation)"
        return f"per-user limits: {procs} (RLIMIT_NPROC), {mem}"

    def for_user(self, name: str) -> ChildLimits:
        """Runs in the spawner thread. The fd in the result is closed by `spawned`."""
        procs_fd = None
        if self.cgroups is not None:
            try:
                procs_fd = self.cgroups.user_procs(name)
            except OSError as exc:
                log.error("cgroup for %s: %s; RLIMIT_DATA instead", name, exc.strerror)
        data = self.memory if self.memory and procs_fd is None else 0
        return ChildLimits(self.processes, data, procs_fd)

    def spawned(self, pid: int | None, child: ChildLimits) -> None:
        """After the spawn (`pid` None: it failed): close the cgroup's fd."""
        if child.cgroup_procs is None:
            return
        try:  # the child moved itself; if its kernel refused, move it now (idempotent)
            if pid is not None:
                os.write(child.cgroup_procs, str(pid).encode())
        except OSError as exc:
            log.error("session pid %d not in its user's cgroup: %s", pid, exc.strerror)
        finally:
            os.close(child.cgroup_procs)
