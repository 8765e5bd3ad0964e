"""`api/upload` and `api/download`: a file dropped on the page lands in the folder of the
session's foreground program (owner-only, never over another file, never through a link) and
leaves chat a notice; a download serves only what a ticket chat wrote names. Real server, real
sockets, a real bash session."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado import httpclient

from terminal_server.file_handlers import MAX_UPLOAD_BYTES, MAX_UPLOADS_AT_ONCE, name_problem

from .support import wait_for_async
from .team_support import Account, team_stack
from .terminal_support import TOKEN, Client, Server, raw_exchange, run, running_server
from .test_terminal_team import Stack, _basic, _closing

BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def _say(client: Client, command: str, marker: str) -> str:
    start = len(client.output)
    client.type(command + "\r")
    pattern = re.compile(rf"{marker}<([^<>$\\]*)>")
    await wait_for_async(lambda: pattern.search(client.output, start), 10, marker)
    match = pattern.search(client.output, start)
    assert match is not None
    return match.group(1)


async def _upload(srv: Server, sid: str, name: str, data: bytes, **headers: str) -> tuple[int, str]:
    query = urllib.parse.urlencode({"session": sid, "name": name})
    r = await srv.fetch(f"api/upload?{query}", {**BEARER, **headers}, method="POST", body=data)
    return r.code, r.body.decode()


def test_a_drop_lands_in_the_foreground_programs_folder_owner_only_never_over_a_file(
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (tmp_path / "target").write_text("keep me\n")
    (work / "link.txt").symlink_to(tmp_path / "target")

    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            sid = owner.session_id
            assert await _say(owner, f'cd {work} && echo "IN<$(pwd)>"', "IN") == str(work)
            code, text = await _upload(srv, sid, "notes.txt", b"first\n")
            assert code == 200, text
            assert json.loads(text) == {"name": "notes.txt", "dir": str(work), "size": 6}
            assert (work / "notes.txt").read_bytes() == b"first\n"
            assert stat.S_IMODE((work / "notes.txt").stat().st_mode) == 0o600
            # Far over the server's default body bound (64 KiB): the route's own applies.
            big = os.urandom(3 * 1024 * 1024)
            assert (await _upload(srv, sid, "big.bin", big))[0] == 200
            assert (work / "big.bin").read_bytes() == big
            # The same name again, and a name that is a link: new names, nothing overwritten.
            assert json.loads((await _upload(srv, sid, "notes.txt", b"second\n"))[1])["name"] == (
                "notes (1).txt"
            )
            assert (work / "notes.txt").read_bytes() == b"first\n"
            assert json.loads((await _upload(srv, sid, "link.txt", b"evil\n"))[1])["name"] == (
                "link (1).txt"
            )
            assert (tmp_path / "target").read_text() == "keep me\n"
            # chat's notices, in the session's folder, one per drop.
            folder = Path(await _say(owner, 'echo "EXP<$MIXVLLM_CHAT_EXPORT>"', "EXP"))
            notices = sorted(folder.glob("dropped-*.json"))
            assert [json.loads(p.read_text())["name"] for p in notices] == [
                "notes.txt", "big.bin", "notes (1).txt", "link (1).txt",
            ]  # fmt: skip
            assert json.loads(notices[0].read_text()) == {
                "name": "notes.txt", "size": 6, "dir": str(work),
            }  # fmt: skip
            # A program in the foreground elsewhere: the drop goes where it is.
            owner.type("(cd sub && exec sleep 30)\r")
            sub = str(work / "sub")
            await wait_for_async(
                lambda: any(
                    os.readlink(f"/proc/{p}/cwd") == sub
                    for p in os.listdir("/proc")
                    if p.isdigit() and _cmd(p) == "sleep"
                ),
                10,
                "sleep in sub",
            )
            code, text = await _upload(srv, sid, "here.txt", b"x")
            assert (code, json.loads(text)["dir"]) == (200, sub)
            assert (work / "sub" / "here.txt").exists()
            owner.type("\x03")

    run(body)


def _cmd(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_a_drop_is_refused_before_its_body_with_one_line() -> None:
    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            sid = owner.session_id
            assert (await _upload(srv, sid, "../x", b"x"))[0] == 400
            assert (await _upload(srv, sid, "a\x1b]0;x\x07", b"x"))[0] == 400
            assert (await _upload(srv, "nosuchsession123", "x", b"x"))[0] == 404
            assert (await _upload(srv, sid, "x", b"x", Origin="http://evil.example"))[0] == 403
            r = await srv.fetch(f"api/upload?session={sid}&name=x", method="POST", body=b"x")
            assert r.code == 403  # no token
            # Too big for the route: answered from the headers alone, the body never sent.
            head = await raw_exchange(
                srv.port,
                f"POST /api/upload?session={sid}&name=big HTTP/1.1\r\nHost: localhost\r\n"
                f"Authorization: Bearer {TOKEN}\r\n"
                f"Content-Length: {MAX_UPLOAD_BYTES + 1}\r\n\r\n".encode(),
            )
            assert head.startswith(b"HTTP/1.1 413")

    run(body)


def test_only_a_few_uploads_are_held_at_once_and_a_dropped_one_is_let_go() -> None:
    async def body() -> None:
        async with running_server() as srv:
            sid = (await srv.connect()).session_id
            files = srv.ctx.manager.files
            writers = []
            for n in range(MAX_UPLOADS_AT_ONCE):  # bodies that never finish arriving
                _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                writer.write(
                    f"POST /api/upload?session={sid}&name=slow{n} HTTP/1.1\r\n"
                    f"Host: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
                    "Content-Length: 1000\r\n\r\npartial".encode()
                )
                writers.append(writer)
            await wait_for_async(lambda: files.uploads == MAX_UPLOADS_AT_ONCE, 10, "held")
            code, text = await _upload(srv, sid, "one-more.txt", b"x")
            assert code == 503 and "try again" in text
            for writer in writers:
                writer.close()
            await wait_for_async(lambda: files.uploads == 0, 10, "let go")
            assert (await _upload(srv, sid, "now.txt", b"x"))[0] == 200

    run(body)


def test_names_a_drop_may_have() -> None:
    assert name_problem("report (final).pdf") is None
    assert name_problem("naïve.txt") is None
    for bad in ("", ".", "..", "a/b", "x" * 256, "tab\there", "bidi\u202egpj.exe"):
        assert name_problem(bad) is not None, bad


def test_a_download_serves_only_what_a_ticket_names_and_never_through_a_link(
    tmp_path: Path,
) -> None:
    (tmp_path / "report.txt").write_bytes(b"report\n")
    (tmp_path / "link").symlink_to(tmp_path / "report.txt")

    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            sid = owner.session_id
            folder = Path(await _say(owner, 'echo "EXP<$MIXVLLM_CHAT_EXPORT>"', "EXP"))
            tickets = {"a" * 20: "report.txt", "b" * 20: "link", "c" * 20: "."}
            for ticket, name in tickets.items():  # what chat's /download writes
                path = folder / f"download-{ticket}.json"
                path.write_text(json.dumps({"path": str(tmp_path / name)}))
                path.chmod(0o600)
            url = f"api/download?session={sid}&ticket="
            r = await srv.fetch(url + "a" * 20, BEARER)
            assert (r.code, r.body) == (200, b"report\n")
            assert r.headers["Content-Disposition"] == "attachment; filename*=UTF-8''report.txt"
            assert (await srv.fetch(url + "b" * 20, BEARER)).code == 403  # a link
            assert (await srv.fetch(url + "c" * 20, BEARER)).code == 403  # a folder
            assert (await srv.fetch(url + "d" * 20, BEARER)).code == 404  # no such ticket
            assert (await srv.fetch(url + "../../x", BEARER)).code == 404
            assert (await srv.fetch(url + "a" * 20)).code == 403  # no token

    run(body)


# -- team mode: two users, their own accounts, behind nginx -----------------------------------
@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with team_stack(TOKEN) as parts:
        yield Stack(parts)


async def _post(stack: Stack, who: Account, path: str, data: bytes) -> httpclient.HTTPResponse:
    req = httpclient.HTTPRequest(
        stack.http(path), method="POST", headers=_basic(who), body=data, follow_redirects=False
    )
    return await httpclient.AsyncHTTPClient().fetch(req, raise_error=False)


def test_a_drop_is_the_users_own_file_and_no_one_reaches_anothers_session_files(
    stack: Stack,
) -> None:
    async def body() -> None:
        alice = await stack.connect(stack.alice)
        mine = alice.session_id
        home = await _say(alice, 'echo "PWD<$(pwd)>"', "PWD")
        r = await _post(stack, stack.alice, f"api/upload?session={mine}&name=hers.txt", b"hi\n")
        assert r.code == 200, r.body
        made = await _say(alice, 'echo "MADE<$(stat -c "%u %a" hers.txt)>"', "MADE")
        assert made == f"{stack.alice.uid} 600"  # created as Alice, owner-only
        assert json.loads(r.body)["dir"] == home == str(stack.alice.home)
        # Bob can neither drop into nor download from Alice's session.
        theirs = await _post(stack, stack.bob, f"api/upload?session={mine}&name=x.txt", b"x")
        assert theirs.code == 404
        folder = await _say(alice, 'echo "DIR<$MIXVLLM_CHAT_EXPORT>"', "DIR")
        ticket = "t" * 24
        wrote = await _say(
            alice,
            f'printf \'{{"path": "%s/hers.txt"}}\' "$PWD" > {folder}/download-{ticket}.json'
            f' && chmod 640 {folder}/download-{ticket}.json; echo "W<$?>"',
            "W",
        )
        assert wrote == "0"
        got = await stack.fetch(stack.alice, f"api/download?session={mine}&ticket={ticket}")
        assert (got.code, got.body) == (200, b"hi\n")
        stolen = await stack.fetch(stack.bob, f"api/download?session={mine}&ticket={ticket}")
        assert stolen.code == 404
        # A folder Alice may not write: nothing is created there with the server's rights.
        assert await _say(alice, 'cd / && echo "AT<$(pwd)>"', "AT") == "/"
        r = await _post(stack, stack.alice, f"api/upload?session={mine}&name=root.txt", b"x")
        assert r.code == 403 and b"may not write there" in r.body
        assert not os.path.exists("/root.txt")

    run(lambda: _closing(stack, body))
