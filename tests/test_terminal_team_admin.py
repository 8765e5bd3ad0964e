"""Team mode's admin page and per-user limits with two real accounts (alice the admin, bob not)
behind nginx, the server as root in a throwaway mount namespace (team_support.py): bob's
session runs under his limits (a fork too many gets EAGAIN, an allocation too big is refused or
killed), alice sees and ends it, and the audit file says who did what."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado import httpclient, websocket

from terminal_server import protocol
from terminal_server.auth import REFUSALS
from tests.support import wait_for_async
from tests.team_support import (
    Account,
    PamStack,
    TeamStack,
    pam_stack,
    say,
    team_stack,
    throwaway_accounts,
)
from tests.terminal_support import TOKEN, Client, run, server_process
from tests.test_terminal_pam import Browser

MAX_PROCESSES = 24
MAX_MEMORY_MIB = 200
# Forks until the kernel says no; prints how many it made and the error's name, then ends
# them (the next test's session is the same uid's: it needs room under the limit).
FORKS = (
    "import errno, os, signal, time\n"
    "kids = []\n"
    "try:\n"
    "    while len(kids) < 200:\n"
    "        pid = os.fork()\n"
    "        if pid == 0:\n"
    "            time.sleep(60); os._exit(0)\n"
    "        kids.append(pid)\n"
    "except OSError as e:\n"
    "    print('NPROC<%d %s>' % (len(kids), errno.errorcode[e.errno]), flush=True)\n"
    "for pid in kids:\n"
    "    os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)\n"
)
ALLOC = (
    "import sys\n"
    "try:\n"
    "    b = bytearray(int(sys.argv[1]) << 20); print('MEM<%s got>' % sys.argv[1])\n"
    "except MemoryError:\n"
    "    print('MEM<%s refused>' % sys.argv[1])\n"
)


def _basic(who: Account) -> dict[str, str]:
    raw = f"{who.name}:{who.password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TeamStack, Path]]:
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    args = ["--admin-users", "alice", "--audit-log", str(audit),
            "--user-max-processes", str(MAX_PROCESSES),
            "--user-max-memory", f"{MAX_MEMORY_MIB}M"]  # fmt: skip
    with team_stack(TOKEN, *args) as parts:
        yield parts, audit


async def _fetch(
    parts: TeamStack, who: Account, path: str, method: str = "GET"
) -> httpclient.HTTPResponse:
    req = httpclient.HTTPRequest(
        parts.url + path, method=method, headers=_basic(who),
        body="" if method == "POST" else None, follow_redirects=False,
    )  # fmt: skip
    return await httpclient.AsyncHTTPClient().fetch(req, raise_error=False)


async def _connect(parts: TeamStack, who: Account) -> Client:
    url = f"ws://127.0.0.1:{parts.proxy_port}/ws"
    conn = await websocket.websocket_connect(httpclient.HTTPRequest(url, headers=_basic(who)))
    client = Client(conn, auto_ack=True)
    await client.wait_setup()
    return client


async def _say(client: Client, command: str, marker: str) -> str:
    start = len(client.output)
    client.type(command + "\r")
    pattern = re.compile(rf"{marker}<([^<>$%\\]*)>")
    await wait_for_async(lambda: pattern.search(client.output, start), 20, marker)
    match = pattern.search(client.output, start)
    assert match is not None
    return match.group(1)


def _py(client: Client, code: str, *args: str) -> str:
    # The program goes in as one quoted word; /usr/bin/python3, not the server's venv.
    quoted = code.replace("'", "'\"'\"'")
    return f"/usr/bin/python3 -c '{quoted}' {' '.join(args)}"


def _log_limits(parts: TeamStack) -> str:
    match = re.search(r"per-user limits: .*", parts.log.read_text())
    assert match is not None, "the server says at start which limits apply"
    return match.group(0)


def test_a_users_session_gets_eagain_past_the_process_limit(
    stack: tuple[TeamStack, Path],
) -> None:
    parts, _ = stack

    async def body() -> None:
        bob = await _connect(parts, parts.bob)
        try:
            made, error = (await _say(bob, _py(bob, FORKS), "NPROC")).split()
            # bob's shell and python count too: the uid's processes, all together.
            assert error == "EAGAIN"
            assert 10 < int(made) < MAX_PROCESSES
        finally:
            await bob.close()

    run(body)
    assert f"{MAX_PROCESSES} processes (RLIMIT_NPROC)" in _log_limits(parts)


def test_a_users_session_cannot_allocate_past_the_memory_limit(
    stack: tuple[TeamStack, Path],
) -> None:
    parts, _ = stack
    cgroup = "memory.max" in _log_limits(parts)

    async def body() -> None:
        alice = await _connect(parts, parts.alice)
        try:
            assert await _say(alice, _py(alice, ALLOC, "50"), "MEM") == "50 got"
            if cgroup:  # the kernel's OOM killer ends it: no MemoryError to print
                status = await _say(alice, _py(alice, ALLOC, "400") + '; echo "RC<$?>"', "RC")
                assert status == "137"
            else:
                assert await _say(alice, _py(alice, ALLOC, "400"), "MEM") == "400 refused"
        finally:
            await alice.close()

    run(body)
    if not cgroup:
        assert f"RLIMIT_DATA {MAX_MEMORY_MIB << 20} bytes per process" in _log_limits(parts)


def test_the_admin_sees_and_ends_another_users_session_and_the_audit_says_so(
    stack: tuple[TeamStack, Path],
) -> None:
    parts, audit = stack

    async def body() -> None:
        bob = await _connect(parts, parts.bob)
        alice = await _connect(parts, parts.alice)
        try:
            await _say(bob, 'x=$(head -c 20000000 /dev/zero | tr "\\0" a); echo "OK<${#x}>"', "OK")
            for path in ("admin", "api/admin/state"):
                resp = await _fetch(parts, parts.bob, path)
                assert (resp.code, resp.body.decode().strip()) == (403, REFUSALS["admin"])
            resp = await _fetch(parts, parts.bob, f"api/admin/end?session={alice.session_id}",
                                "POST")  # fmt: skip
            assert resp.code == 403 and not alice.closed.is_set()

            state: dict[str, Any] = json.loads(
                (await _fetch(parts, parts.alice, "api/admin/state")).body
            )
            rows = {r["id"]: r for r in state["sessions"]}
            his = rows[bob.session_id]
            assert his["user"] == "bob" and his["attached"]
            assert his["processes"] >= 1 and his["rss_bytes"] > 20_000_000
            assert rows[alice.session_id]["user"] == "alice"
            assert {u["name"] for u in state["users"]} >= {"alice", "bob"}

            resp = await _fetch(parts, parts.alice, f"api/admin/end?session={bob.session_id}",
                                "POST")  # fmt: skip
            assert resp.code == 204
            assert await bob.wait_closed() == protocol.CLOSE_SESSION_ENDED
            assert not alice.closed.is_set()
        finally:
            await alice.close()
            await bob.close()

    run(body)
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    sessions = {e["session"]: e["user"] for e in entries if e["event"] == "session_start"}
    ended = [e for e in entries if e["event"] == "admin_end_session"]
    assert len(ended) == 1 and (ended[0]["user"], ended[0]["owner"]) == ("alice", "bob")
    assert sessions[ended[0]["session"]] == "bob"
    bobs_end = [e for e in entries if e["event"] == "session_end"
                and e["session"] == ended[0]["session"]]  # fmt: skip
    assert bobs_end[0]["reason"] == "admin" and bobs_end[0]["user"] == "bob"
    refused = [(e["user"], e["path"]) for e in entries if e["event"] == "admin_refused"]
    assert refused == [("bob", "/admin"), ("bob", "/api/admin/state"), ("bob", "/api/admin/end")]


# -- with real PAM logins: an admin logs a user out ------------------------------------------
@pytest.fixture(scope="module")
def pam() -> Iterator[PamStack]:
    pytest.importorskip("pamela")
    with pam_stack("--admin-users", "alice") as parts:
        yield parts


async def _logged_in(stack: PamStack, who: Account) -> Browser:
    browser = Browser(stack)
    assert (await browser.login(who)).code == 303
    assert (await browser.page()).code == 200 and browser.csrf
    return browser


def test_an_admin_logs_a_user_out_everywhere_and_closes_their_tabs(pam: PamStack) -> None:
    async def body() -> None:
        alice = await _logged_in(pam, pam.alice)
        bob, bobs_laptop = await _logged_in(pam, pam.bob), await _logged_in(pam, pam.bob)
        try:
            tab = await bob.connect()
            assert await say(tab, 'echo "ME<$(id -un)>"', "ME") == "bob"
            state = json.loads((await alice.fetch("api/admin/state")).body)
            assert {u["name"]: u["logins"] for u in state["users"]} == {"alice": 1, "bob": 2}
            assert (await bob.fetch("admin")).code == 403

            csrf = {"X-CSRF-Token": alice.csrf}
            out = await alice.fetch("api/admin/logout?user=bob", "POST", "", **csrf)
            assert out.code == 204
            assert await tab.wait_closed() == protocol.CLOSE_POLICY
            for browser in (bob, bobs_laptop):
                assert (await browser.fetch("api/status")).code == 401
            again = await alice.fetch("api/admin/logout?user=bob", "POST", "", **csrf)
            assert again.code == 404  # no login left
            # His session outlives the logins (until the idle timeout, or an admin's "end").
            state = json.loads((await alice.fetch("api/admin/state")).body)
            assert [s["user"] for s in state["sessions"]] == ["bob"]
        finally:
            for browser in (alice, bob, bobs_laptop):
                await browser.close()

    run(body)
    entries = [json.loads(line) for line in pam.audit.read_text().splitlines()]
    (out,) = [e for e in entries if e["event"] == "admin_logout"]
    assert (out["user"], out["target"], out["logins"]) == ("alice", "bob", 2)


# -- with only the capabilities compose gives the terminal container -------------------------
COMPOSE_CAPS = "-all,+setuid,+setgid,+kill,+chown"  # deploy/compose.team.yml's cap_add


def test_with_only_composes_capabilities_sessions_start_in_the_users_0700_home() -> None:
    """Root without CAP_DAC_*: the server cannot enter alice's 0700 home; her session does,
    as her, and still gets her limits."""
    with throwaway_accounts(["alice"]) as ([alice], in_namespace):
        prefix = [*in_namespace, "setpriv", "--bounding-set", COMPOSE_CAPS, "--inh-caps", "-all"]
        argv = ["--auth", "proxy", "--trusted-proxies", "127.0.0.1/32", "--audit-log", "off",
                "--no-autostart-chat", "--shell", "/bin/bash --norc --noprofile",
                "--user-max-processes", "77"]  # fmt: skip
        env = {"MIXVLLM_TERMINAL_TOKEN": TOKEN}
        with server_process(*argv, env=env, prefix=prefix, stderr=subprocess.DEVNULL) as (
            proc,
            url,
        ):
            caps = Path(f"/proc/{proc.pid}/status").read_text().split("CapEff:")[1].split()[0]
            assert int(caps, 16) == 0xE1  # chown, kill, setgid, setuid: nothing else

            async def body() -> None:
                headers = {"X-Forwarded-User": "alice", "Authorization": f"Bearer {TOKEN}"}
                ws = url.replace("http:", "ws:").split("?")[0] + "ws"
                conn = await websocket.websocket_connect(
                    httpclient.HTTPRequest(ws, headers=headers)
                )
                client = Client(conn, auto_ack=True)
                try:
                    await client.wait_setup()
                    where = await say(client, 'echo "AT<$(pwd) $(id -un) $(ulimit -u)>"', "AT")
                    assert where.split() == [str(alice.home), "alice", "77"]
                finally:
                    await client.close()

            run(body)
