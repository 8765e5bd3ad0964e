"""The pending-writes spool: exchanges the history database could not take, kept beside it.

An exchange that cannot be written (the database is locked, damaged or unwritable) is
appended here, one JSON line each (owner-only, under an exclusive lock), and written with the
next exchange that can be: a bad database costs a line on the screen, never an exchange. The
rows carry unique ids, so two processes draining the same spool write each row once.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from chat_cli.history.store import Exchange, Store

SUFFIX = ".pending"


def spool_path(db: Path) -> Path:
    return db.with_name(db.name + SUFFIX)


def spool(db: Path, exchange: Exchange) -> None:
    """Keep an exchange that could not be written; raises OSError if even that fails."""
    path = spool_path(db)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = json.dumps(exchange._asdict(), ensure_ascii=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def drain(store: Store) -> int:
    """Write the spooled exchanges, then empty the spool; returns how many there were. Under
    the spool's lock, so an exchange spooled meanwhile waits for the next drain."""
    path = spool_path(store.path)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "rb") as spooled:
            lines = spooled.read().splitlines()
        pending = []
        for line in lines:
            try:
                pending.append(Exchange(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut by a crash mid-write: the rest still goes in
        if pending:
            store.add(pending)
        os.ftruncate(fd, 0)
        return len(pending)
    finally:
        os.close(fd)
