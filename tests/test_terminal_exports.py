"""exports.py: the server reads a session's chat export only as the session's own file.

Whatever is in the export folder is the session's choice: a link to a file the server may
read (someone else's, /proc/self/environ with the server's secrets), a hard link, a FIFO, a
file swapped while the server looks. The server itself runs as root here, so that files of
other users can be made; with --session-user the sessions run as `nobody`.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from terminal_server.exports import MAX_BYTES

from .conftest import require
from .terminal_support import TOKEN, Server, run, running_server

BEARER = {"Authorization": f"Bearer {TOKEN}"}
NOBODY = pwd.getpwnam("nobody").pw_uid
LEGIT = b"# Chat\n\nhello\n"
SECRET = f"SECRET-{secrets.token_hex(8)}".encode()

Attack = Callable[[Path, Path, int], None]  # (the export folder, a scratch dir, the owner uid)


def _owned(path: Path, uid: int) -> Path:
    os.lchown(path, uid, -1)
    return path


def _secret(scratch: Path, uid: int) -> Path:
    path = scratch / f"secret-{uid}"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return _owned(path, uid)


def _symlink_to_someone_elses_file(folder: Path, scratch: Path, owner: int) -> None:
    Path(folder, "chat.md").symlink_to(_secret(scratch, 0 if owner != 0 else NOBODY))
    _owned(folder / "chat.md", owner)


def _symlink_to_the_servers_environment(folder: Path, scratch: Path, owner: int) -> None:
    Path(folder, "chat.md").symlink_to("/proc/self/environ")
    _owned(folder / "chat.md", owner)


def _hard_link_to_someone_elses_file(folder: Path, scratch: Path, owner: int) -> None:
    os.link(_secret(scratch, 0 if owner != 0 else NOBODY), folder / "chat.md")


def _hard_link_to_a_file_of_its_own(folder: Path, scratch: Path, owner: int) -> None:
    os.link(_secret(scratch, owner), folder / "chat.md")


def _fifo(folder: Path, scratch: Path, owner: int) -> None:
    os.mkfifo(folder / "chat.md", 0o644)
    _owned(folder / "chat.md", owner)


def _a_file_someone_else_placed(folder: Path, scratch: Path, owner: int) -> None:
    Path(folder, "chat.md").write_bytes(SECRET)
    _owned(folder / "chat.md", 0 if owner != 0 else NOBODY)


def _too_big(folder: Path, scratch: Path, owner: int) -> None:
    with open(folder / "chat.md", "wb") as file:
        file.truncate(MAX_BYTES + 1)  # sparse: nothing written, still too big
    _owned(folder / "chat.md", owner)


ATTACKS = [
    _symlink_to_someone_elses_file,
    _symlink_to_the_servers_environment,
    _hard_link_to_someone_elses_file,
    _hard_link_to_a_file_of_its_own,
    _fifo,
    _a_file_someone_else_placed,
    _too_big,
]


def _with_export_folder(
    session_user: str | None, check: Callable[[Server, Path, int], Awaitable[None]]
) -> None:
    """Run `check(server, the session's export folder, the session user's uid)`."""
    require(os.geteuid() == 0, "root, to make files of other users (and run sessions as one)")
    overrides = {"session_user": session_user} if session_user else {}

    async def body() -> None:
        async with running_server(**overrides) as srv:
            owner = await srv.connect()
            owner.type('echo "dir:$MIXVLLM_CHAT_EXPORT:"\r')
            await owner.expect("dir:/")
            folder = Path(re.findall(r"dir:(/[^:]+):", owner.output)[0])
            uid = NOBODY if session_user else os.geteuid()
            # What chat writes is served: the checks below cannot pass by refusing everything.
            Path(folder, "chat.md").write_bytes(LEGIT)
            _owned(folder / "chat.md", uid)
            r = await srv.fetch(f"api/chat?session={owner.session_id}", BEARER)
            assert (r.code, r.body) == (200, LEGIT)
            os.unlink(folder / "chat.md")
            await check(srv, folder, uid)

    run(body)


@pytest.mark.parametrize("session_user", [None, "nobody"])
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda f: f.__name__.strip("_"))
def test_the_export_is_read_only_as_the_sessions_own_regular_file(
    attack: Attack, session_user: str | None, tmp_path: Path
) -> None:
    async def check(srv: Server, folder: Path, uid: int) -> None:
        attack(folder, tmp_path, uid)
        sid = folder.name
        r = await srv.fetch(f"api/chat?session={sid}", BEARER, request_timeout=10)
        assert r.code == 404, r.body[:200]
        assert SECRET not in r.body and TOKEN.encode() not in r.body
        # The server goes on: the next export is served.
        os.unlink(folder / "chat.md")
        Path(folder, "chat.md").write_bytes(LEGIT)
        _owned(folder / "chat.md", uid)
        assert (await srv.fetch(f"api/chat?session={sid}", BEARER)).body == LEGIT

    _with_export_folder(session_user, check)


def test_a_file_swapped_for_a_link_while_the_server_reads_never_leaks(tmp_path: Path) -> None:
    """A regular file and a link take turns under the name, as fast as rename allows."""

    async def check(srv: Server, folder: Path, uid: int) -> None:
        Path(folder, "file").write_bytes(LEGIT)
        _owned(folder / "file", uid)
        Path(folder, "link").symlink_to(_secret(tmp_path, 0))
        stop = threading.Event()

        def swap() -> None:
            while not stop.is_set():
                os.rename(folder / "file", folder / "chat.md")
                os.rename(folder / "chat.md", folder / "file")
                os.rename(folder / "link", folder / "chat.md")
                os.rename(folder / "chat.md", folder / "link")

        swapper = threading.Thread(target=swap)
        swapper.start()
        try:
            answers = [
                await srv.fetch(f"api/chat?session={folder.name}", BEARER) for _ in range(200)
            ]
        finally:
            stop.set()
            swapper.join()
        assert all(r.code in (200, 404) for r in answers)
        assert not [r for r in answers if SECRET in r.body]
        assert all(r.body == LEGIT for r in answers if r.code == 200)

    _with_export_folder("nobody", check)
