"""Admins (team/admins.py), the admin page and its API (team/admin_handlers.py, admin_view.py),
the per-user idle timeout, and the audit records of sessions, shares and exports; in process,
against real sessions. Two real accounts behind nginx: test_terminal_limits.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mixvllm_common.names import EXPORT_ENV, EXPORT_MARKDOWN
from terminal_server import protocol
from terminal_server.auth import REFUSALS
from terminal_server.config import ConfigError, load_config
from terminal_server.login.cookies import login_cookie_name
from terminal_server.reaper import usage_by_session
from terminal_server.team.admins import is_admin
from tests.support import wait_for, wait_for_async
from tests.terminal_support import TOKEN, make_config, run, running_server

HEADER = "X-Forwarded-User"
ENV = {"MIXVLLM_TERMINAL_TOKEN": TOKEN}


def _as(user: str) -> dict[str, str]:
    return {HEADER: user, "Authorization": f"Bearer {TOKEN}"}


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _events(path: Path, event: str) -> list[dict[str, Any]]:
    return [e for e in _audit(path) if e["event"] == event]


# -- who is an admin -------------------------------------------------------------------------
def test_admins_come_from_the_option_table() -> None:
    cfg = load_config(
        ["--auth", "proxy", "--admin-users", "alice, bob", "--admin-groups", "wheel"],
        {**ENV, "MIXVLLM_TERMINAL_USER_MAX_MEMORY": "512M"},
    )
    assert (cfg.admin_users, cfg.admin_groups) == (("alice", "bob"), ("wheel",))
    assert (cfg.user_max_memory, cfg.user_max_processes, cfg.user_idle_timeout) == (
        512 << 20,
        4096,
        0.0,
    )
    assert load_config([], {}).admin_users == ()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--admin-users", "a;id"], "--admin-users: must be comma-separated user or group names"),
        (["--admin-groups", "x y"], "--admin-groups: must be comma-separated"),
        (["--user-max-memory", "lots"], "--user-max-memory: must be a size such as 512M"),
        (["--user-max-processes", "-1"], "--user-max-processes: must be a number"),
        (["--user-idle-timeout", "-5"], "--user-idle-timeout: must be seconds, 0 or more"),
    ],
)
def test_bad_admin_and_limit_settings_get_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(argv, ENV)


def test_the_owner_is_the_admin_in_token_mode_and_team_admins_are_named() -> None:
    assert is_admin(make_config(), "owner")
    team = make_config(auth="proxy", admin_users=("alice",), admin_groups=("daemon",))
    assert is_admin(team, "alice")
    assert not is_admin(team, "bob")
    assert not is_admin(team, None)
    assert is_admin(team, "bob", ["daemon"])  # a group the login brought (an OIDC claim)
    assert is_admin(team, "daemon")  # the Unix account's own group on this box
    assert not is_admin(make_config(auth="proxy"), "alice")  # none configured: nobody


# -- the admin page and API ------------------------------------------------------------------
def test_only_admins_reach_the_admin_page_and_a_refusal_is_audited(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"

    async def body() -> None:
        async with running_server(auth="proxy", admin_users=("alice",), audit_log=audit) as srv:
            for path in ("admin", "api/admin/state", "static/admin.js"):
                resp = await srv.fetch(path, _as("bob"))
                assert (resp.code, resp.body.decode().strip()) == (403, REFUSALS["admin"]), path
                assert (await srv.fetch(path, _as("alice"))).code == 200, path
            page = await srv.fetch("admin", _as("alice"))
            assert "default-src 'none'" in page.headers["Content-Security-Policy"]
            resp = await srv.fetch("api/admin/end?session=x", _as("bob"), method="POST", body="")
            assert resp.code == 403

    run(body)
    refused = _events(audit, "admin_refused")
    assert [(e["user"], e["path"]) for e in refused] == [
        ("bob", "/admin"),
        ("bob", "/api/admin/state"),
        ("bob", "/static/admin.js"),
        ("bob", "/api/admin/end"),
    ]


def test_in_token_mode_the_admin_link_with_the_token_becomes_the_owners_cookie() -> None:
    async def body() -> None:
        async with running_server() as srv:
            assert (await srv.fetch("admin")).code == 403
            assert (await srv.fetch("admin?token=wrong-token-000")).code == 403
            resp = await srv.fetch(f"admin?token={TOKEN}")
            assert (resp.code, resp.headers["Location"]) == (302, "/admin")
            cookie = resp.headers["Set-Cookie"].split(";")[0]
            assert (await srv.fetch("admin", {"Cookie": cookie})).code == 200

    run(body)


def test_the_state_shows_the_sessions_with_their_processes() -> None:
    async def body() -> None:
        async with running_server() as srv:
            idle = await srv.connect()
            busy = await srv.connect()
            # The busy shell holds 40 MiB and has burnt some CPU.
            busy.type("x=$(head -c 41943040 /dev/zero | tr '\\0' a); echo HELD${#x}\r")
            await busy.expect("HELD41943040", 20)
            started = srv.ctx.manager.sessions[busy.session_id].started_at
            await wait_for_async(lambda: time.monotonic() - started >= 0.5, 5, "half a second")
            busy.type("\r")  # input: its idle time starts again, its age goes on
            shared = await srv.fetch(
                f"api/share?session={busy.session_id}", srv.auth_headers(), method="POST", body=""
            )
            assert shared.code == 200
            await idle.close()
            state = json.loads((await srv.fetch("api/admin/state", srv.auth_headers())).body)
            assert state["you"] == "owner"
            rows = {r["id"]: r for r in state["sessions"]}
            assert rows.keys() == {idle.session_id, busy.session_id}
            row = rows[busy.session_id]
            assert row["user"] == "owner" and row["attached"] and row["shared"]
            assert row["rss_bytes"] > 40 << 20
            assert row["processes"] == 1 and row["cpu_s"] > 0
            assert row["idle_s"] + 0.4 < row["age_s"] < 60
            assert rows[idle.session_id]["attached"] is False
            assert rows[idle.session_id]["shared"] is False
            (user,) = state["users"]
            assert user["name"] == "owner" and user["sessions"] == 2
            assert user["rss_bytes"] >= row["rss_bytes"] and user["tokens"] is None
            assert state["usage_counted"] is False

    run(body)


def test_an_admin_ends_a_session_and_revokes_a_share_and_both_are_audited(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit.jsonl"

    async def body() -> None:
        async with running_server(audit_log=audit) as srv:
            owner = srv.auth_headers()
            client = await srv.connect()
            sid = client.session_id
            resp = await srv.fetch(f"api/share?session={sid}", owner, method="POST", body="")
            assert resp.code == 200
            share = srv.ctx.shares.of(srv.ctx.manager.sessions[sid])
            assert share is not None

            # From another origin (a page elsewhere posting with the admin's credentials).
            cross = await srv.fetch(
                f"api/admin/revoke?session={sid}",
                {**owner, "Origin": "http://evil.example"},
                method="POST",
                body="",
            )
            assert (cross.code, share.ended) == (403, False)
            for bad in ("nope", "../x", sid[:-1] + ("Z" if sid[-1] != "Z" else "Y")):
                resp = await srv.fetch(f"api/admin/end?session={bad}", owner, method="POST",
                                       body="")  # fmt: skip
                assert resp.code == 404, bad

            resp = await srv.fetch(f"api/admin/revoke?session={sid}", owner, method="POST", body="")
            assert resp.code == 204 and share.ended
            again = await srv.fetch(f"api/admin/revoke?session={sid}", owner, method="POST",
                                    body="")  # fmt: skip
            assert again.code == 404  # nothing shared any more
            resp = await srv.fetch(f"api/admin/end?session={sid}", owner, method="POST", body="")
            assert resp.code == 204
            assert await client.wait_closed() == protocol.CLOSE_SESSION_ENDED
            assert sid not in srv.ctx.manager.sessions

    run(body)
    events = [e["event"] for e in _audit(audit)]
    assert events == [
        "session_start",
        "share_created",
        "admin_revoke_share",
        "admin_end_session",
        "session_end",
    ]
    revoke, end = _events(audit, "admin_revoke_share")[0], _events(audit, "session_end")[0]
    assert revoke["owner"] == "owner" and end["reason"] == "admin"


# -- audit records of sessions, shares, exports ----------------------------------------------
def test_sessions_shares_and_exports_are_audited_with_who_and_why(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"

    async def body() -> None:
        async with running_server(audit_log=audit) as srv:
            first = await srv.connect()
            sid = first.session_id
            for method in ("POST", "POST", "DELETE", "DELETE"):  # each twice: one record each
                body = "" if method == "POST" else None
                resp = await srv.fetch(f"api/share?session={sid}", srv.auth_headers(),
                                       method=method, body=body)  # fmt: skip
                assert resp.code in (200, 204)
            first.type(f'echo "# hi" > "${EXPORT_ENV}/{EXPORT_MARKDOWN}"; echo WROTE\r')
            await first.expect("WROTE\r\n")
            resp = await srv.fetch(f"api/chat?session={sid}", srv.auth_headers())
            assert resp.code == 200
            restarted = await srv.connect(f"session={sid}&restart=1")
            await first.wait_closed()
            restarted.type("exit\r")
            await restarted.wait_closed()
            last = await srv.connect()
            last_id = last.session_id
            await wait_for_async(lambda: bool(_events(audit, "session_end")[1:]), 10, "exit")
            await last.close()
            assert last_id in srv.ctx.manager.sessions  # detached, not ended

        # The server's shutdown ends the last one.
        ends = _events(audit, "session_end")
        assert [(e["session"], e["reason"]) for e in ends] == [
            (sid, "restart"),
            (restarted.session_id, "exited"),
            (last_id, "shutdown"),
        ]
        assert ends[1]["exit"] == 0

    run(body)
    events = [e["event"] for e in _audit(audit)]
    assert events.count("share_created") == 1 and events.count("share_revoked") == 1
    (read,) = _events(audit, "export_read")
    assert (read["user"], read["format"], read["bytes"]) == ("owner", "chat.md", 5)
    assert all(e["user"] == "owner" for e in _audit(audit))


def test_a_session_without_input_ends_after_the_user_idle_timeout(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"

    async def body() -> None:
        async with running_server(user_idle_timeout=1.0, audit_log=audit) as srv:
            quiet = await srv.connect()
            busy = await srv.connect()
            for _ in range(12):  # 1.8 s of typing every 0.15 s keeps `busy` alive
                busy.type(" ")
                await asyncio.sleep(0.15)  # the user's pace, not a wait for a condition
            assert await quiet.wait_closed(5) == protocol.CLOSE_SESSION_ENDED
            assert not busy.closed.is_set()

    run(body)
    ends = _events(audit, "session_end")
    assert ends[0]["reason"] == "no input"


# -- the /proc reading behind CPU and memory -------------------------------------------------
def test_usage_counts_every_process_of_a_kernel_session() -> None:
    code = (
        "import os, sys, time\n"
        "b = bytearray(64 << 20)\n"  # touched: resident
        "if os.fork() == 0:\n"
        "    time.sleep(30)\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        usage = usage_by_session([proc.pid, 999_999_999])
        mine = usage[proc.pid]
        assert mine.processes == 2
        assert mine.rss_bytes > 64 << 20
        assert mine.cpu_seconds >= 0.25
        assert usage[999_999_999].processes == 0
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        wait_for(lambda: not usage_by_session([proc.pid])[proc.pid].processes, 10, "gone")


# -- with logins (--auth pam|oidc): the login's groups, who is logged in, CSRF ---------------
def test_with_logins_the_groups_a_login_brought_make_an_admin_and_actions_need_csrf(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit.jsonl"

    async def body() -> None:
        async with running_server(auth="pam", admin_groups=("ops",), audit_log=audit) as srv:

            def as_login(cookie: str) -> dict[str, str]:
                return {"Cookie": f"{login_cookie_name(srv.ctx)}={cookie}"}

            alice = as_login(srv.ctx.logins.start("alice", "oidc", groups=("ops", "ml")))
            bob = as_login(srv.ctx.logins.start("bob", "oidc", groups=("ml",)))
            srv.ctx.logins.start("bob", "pam")  # a second browser
            page = await srv.fetch("admin", alice)
            assert page.code == 200
            match = re.search(rb'<meta name="mixvllm-csrf" content="([^"]+)">', page.body)
            assert match is not None
            assert (await srv.fetch("admin", bob)).code == 403
            assert (await srv.fetch("admin")).code == 302  # no login: to the login page

            state = json.loads((await srv.fetch("api/admin/state", alice)).body)
            assert {u["name"]: u["logins"] for u in state["users"]} == {"alice": 1, "bob": 2}

            end = "api/admin/end?session=AAAAAAAAAAAA"
            refused = await srv.fetch(end, alice, method="POST", body="")
            assert (refused.code, refused.body.decode().strip()) == (403, REFUSALS["csrf"])
            csrf = {**alice, "X-CSRF-Token": match.group(1).decode()}
            assert (await srv.fetch(end, csrf, method="POST", body="")).code == 404  # passed

    run(body)
    assert [e["user"] for e in _events(audit, "admin_refused")] == ["bob"]


def test_the_state_carries_each_users_token_usage() -> None:
    async def body() -> None:
        async with running_server(auth="proxy", admin_users=("alice",)) as srv:
            for user, prompt, completion in (("bob", 120, 30), ("bob", 5, 7), ("carol", 1, 2)):
                srv.ctx.usage.started(user)
                srv.ctx.usage.finished(user, prompt, completion)
            srv.ctx.usage.started("carol")  # one still streaming
            state = json.loads((await srv.fetch("api/admin/state", _as("alice"))).body)
            tokens = {u["name"]: u["tokens"] for u in state["users"]}
            assert tokens.keys() == {"bob", "carol"}  # no sessions: from the usage alone
            assert (tokens["bob"]["prompt_today"], tokens["bob"]["completion_total"]) == (125, 37)
            assert (tokens["bob"]["requests"], tokens["carol"]["active"]) == (2, 1)
            assert state["usage_counted"] is True

    run(body)
