"""A session's files, written and read as the session's own user: a file dropped on the page
(created in the folder of the session's foreground process) and a file chat offered for
download.

Standard library only, and a program of its own: when a session runs as another account
(--session-user, team mode), the server runs this very file as that account (file_access.py),
so the kernel checks every permission as it would for the user, and nothing the user can
reach (a link, a folder they may not write) makes the server act with its own rights.
A new file is created with O_EXCL | O_NOFOLLOW, mode 0600: never over another file, never
through a link; a taken name gets ` (1)`, ` (2)`... before its extension.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
MAX_TRIES = 100  # `name (99).ext` at most: then the folder is full of drops of that name


class Refused(Exception):
    """What cannot be done, as (HTTP status, one line for the user)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def candidates(name: str) -> list[str]:
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension, or a dot file
        stem, dot, ext = name, "", ""
    return [name] + [f"{stem} ({n}){dot}{ext}" for n in range(1, MAX_TRIES)]


def _create(dir_fd: int, name: str) -> tuple[int, str]:
    for candidate in candidates(name):
        try:
            return os.open(candidate, _NEW, 0o600, dir_fd=dir_fd), candidate
        except FileExistsError:
            continue  # a file, a folder or a link by that name: the next name
        except OSError as err:
            raise _refusal(err, "cannot create a file in that folder") from None
    raise Refused(409, f"{MAX_TRIES} files named like {name} are there already")


def _refusal(err: OSError, what: str) -> Refused:
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Refused(403, f"{what}: the session's user may not write there")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return Refused(507, f"{what}: the disk is full")
    return Refused(500, f"{what}: {err.strerror or err}")


def write_new(dir_fd: int, name: str, data: bytes) -> str:
    """Create `name` (or the first free variant) in the folder `dir_fd`; return its name."""
    fd, created = _create(dir_fd, name)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as err:
        os.close(fd)
        os.unlink(created, dir_fd=dir_fd)  # no half file left behind
        raise _refusal(err, "cannot write the file") from None
    os.close(fd)
    return created


def write_notice(folder: str, name: str, notice: dict[str, object]) -> bool:
    """One JSON notice for chat in the session's export folder; False if it cannot go."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fd = os.open(name, _NEW, 0o600, dir_fd=dir_fd)
    except OSError:
        return False
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(notice, ensure_ascii=False) + "\n")
    return True


def read_file(path: str, limit: int) -> bytes:
    """A regular file's bytes, at most `limit`; the last part of `path` is no link."""
    try:
        fd = os.open(path, _READ)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise Refused(403, "the file is a symbolic link") from None
        if err.errno == errno.ENOENT:
            raise Refused(404, "the file is gone") from None
        raise _refusal(err, "cannot read the file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(403, "not a regular file")
        if info.st_size > limit:
            raise Refused(413, f"the file is over the {limit // (1024 * 1024)} MiB limit")
        chunks = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as err:
        raise _refusal(err, "cannot read the file") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise Refused(413, f"the file is over the {limit // (1024 * 1024)} MiB limit")
    return data


def upload(
    pids: list[int], name: str, data: bytes, notice: tuple[str, str] | None
) -> dict[str, str]:
    """Create the dropped file in the folder of the first of `pids` whose folder can be
    opened (the foreground process, then the session's first), and leave chat a notice in
    the folder `notice` names; return the file's name and folder."""
    for pid in pids:
        try:
            dir_fd = os.open(f"/proc/{pid}/cwd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            folder = os.readlink(f"/proc/{pid}/cwd")
            break
        except OSError:
            continue
    else:
        raise Refused(409, "the session has no folder to drop into")
    try:
        created = write_new(dir_fd, name, data)
    finally:
        os.close(dir_fd)
    if notice is not None:
        write_notice(notice[0], notice[1], {"name": created, "size": len(data), "dir": folder})
    return {"name": created, "dir": folder}


def main(argv: list[str]) -> int:
    """`upload PID,PID NAME LIMIT [NOTICE_FOLDER NOTICE_NAME]` (the file's bytes on stdin;
    prints {"name": ..., "dir": ...}) or `read PATH LIMIT` (the bytes on stdout); a refusal
    prints {"status": ..., "error": ...} on stderr and exits 3."""
    try:
        if argv[0] == "upload":
            limit = int(argv[3])
            data = sys.stdin.buffer.read(limit + 1)
            if len(data) > limit:
                raise Refused(413, "the file is over the upload limit")
            pids = [int(pid) for pid in argv[1].split(",")]
            notice = (argv[4], argv[5]) if len(argv) > 5 else None
            sys.stdout.write(json.dumps(upload(pids, argv[2], data, notice)))
        else:
            sys.stdout.buffer.write(read_file(argv[1], int(argv[2])))
    except Refused as refused:
        sys.stderr.write(json.dumps({"status": refused.status, "error": refused.message}))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
