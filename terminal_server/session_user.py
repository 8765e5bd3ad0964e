"""Sessions run as another user (--session-user): who that is, and what the server needs for it.

A session of the server's own uid could read the server's environment (its token, the
model's key) from /proc and signal it; another uid can do neither.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

# Capability bits (linux/capability.h): switch to the user, chown its PTY and export
# folder, and signal its processes on close.
CAPABILITIES = {"CHOWN": 0, "KILL": 5, "SETGID": 6, "SETUID": 7}


NOBODY_UID = 65534  # the overflow uid (as identity.py): no one's account


class SessionUserError(ValueError):
    """The session user cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class SessionUser:
    name: str
    uid: int
    gid: int
    home: str
    # A team user's login (login()): their shell and supplementary groups, as login sets them.
    # --session-user keeps neither: the server's SHELL, no supplementary groups.
    shell: str | None = None
    groups: tuple[int, ...] = ()

    def env(self) -> dict[str, str]:
        env = {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}
        if self.shell is not None:
            env["SHELL"] = self.shell
        return env


def lookup(name: str, what: str = "--session-user") -> SessionUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SessionUserError(f"{what} {name}: no such user") from None
    return SessionUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def login(name: str, min_uid: int) -> SessionUser:
    """The account a team user's sessions run as: it must exist and not be a system one."""
    user = lookup(name, "user")
    if user.uid < min_uid or user.uid == NOBODY_UID:
        raise SessionUserError(f"user {name}: a system account (uid < {min_uid}) never logs in")
    groups = tuple(g for g in os.getgrouplist(user.name, user.gid) if g != user.gid)
    shell = pwd.getpwnam(name).pw_shell or "/bin/sh"
    return dataclasses.replace(user, shell=shell, groups=groups)


def _effective_capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_can_switch(user: SessionUser) -> None:
    """Raise SessionUserError naming the capabilities the server lacks for `user`."""
    if user.uid == os.geteuid():
        return
    caps = _effective_capabilities()
    missing = [name for name, bit in CAPABILITIES.items() if not caps >> bit & 1]
    if missing:
        raise SessionUserError(
            f"--session-user {user.name} needs the capabilities {', '.join(CAPABILITIES)}; "
            f"this server lacks {', '.join(missing)} (run it as root, or add them: "
            "compose `cap_add`)"
        )


def hand_over_folder(path: Path, user: SessionUser) -> None:
    """Make a session's export folder the user's, readable by the server's group only.

    The setgid bit gives the files `chat` writes the server's group, so the server reads them.
    """
    os.chmod(path, 0o2770)  # noqa: S103 - the group is the server's; while it is still ours
    os.chown(path, user.uid, os.getegid())
