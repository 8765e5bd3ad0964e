"""Team mode (`--auth proxy`): the user comes from a trusted reverse proxy's header; sessions
belong to that user and run as their Unix account.

The guard's refusals are checked in process; the isolation between two users behind a real
nginx (basic auth) in front of a server whose accounts exist only in a throwaway mount
namespace (team_support.py).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from tornado import httpclient, websocket

from terminal_server import protocol
from terminal_server.auth import REFUSALS
from terminal_server.config import ConfigError, load_config
from terminal_server.identity import OWNER, peer_trusted
from tests.conftest import require
from tests.team_support import Account, TeamStack, say, team_stack
from tests.terminal_support import TOKEN, Client, run, running_server

HEADER = "X-Forwarded-User"
TOKEN_HEADERS = {"Authorization": f"Bearer {TOKEN}"}


# -- configuration --------------------------------------------------------------------------
def test_token_mode_is_the_default_and_proxy_mode_is_built_from_the_option_table() -> None:
    assert load_config([], {}).auth == "token"
    env = {"MIXVLLM_TERMINAL_TOKEN": TOKEN, "MIXVLLM_TERMINAL_AUTH": "proxy"}
    cfg = load_config(["--trusted-proxies", "10.1.0.0/16, ::1", "--min-uid", "2000"], env)
    assert cfg.auth == "proxy"
    assert cfg.trusted_proxies == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("::1/128"),
    )
    assert (cfg.min_uid, cfg.max_user_sessions, cfg.proxy_user_header) == (2000, 8, HEADER)
    assert load_config(["--auth", "proxy"], {"MIXVLLM_TERMINAL_TOKEN": TOKEN}).trusted_proxies == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--auth", "proxy"], "needs a configured token"),
        (["--auth", "ldap"], "must be one of token, proxy, pam"),
        (["--auth", "proxy", "--trusted-proxies", "10.0.0.300/8"], "CIDR"),
        (["--auth", "proxy", "--trusted-proxies", " , "], "at least one"),
        (["--auth", "proxy", "--proxy-user-header", "X: y"], "header name"),
        (["--auth", "proxy", "--no-auth"], "exclude each other"),
        (["--auth", "proxy", "--token", TOKEN], "shows in `ps` to every user"),
    ],
)
def test_bad_team_settings_get_one_line(argv: list[str], message: str) -> None:
    env = {} if "needs a" in message else {"MIXVLLM_TERMINAL_TOKEN": TOKEN}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(argv, env)


# -- the guard, in process ------------------------------------------------------------------
def test_the_header_from_an_untrusted_address_is_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        nets = (ipaddress.ip_network("10.9.0.0/16"),)
        async with running_server(auth="proxy", trusted_proxies=nets) as srv:
            with caplog.at_level(logging.WARNING, "mixvllm.terminal"):
                resp = await srv.fetch("", {HEADER: "alice", **TOKEN_HEADERS})
            assert resp.code == 403
            assert resp.body.decode().strip() == REFUSALS["proxy"]
            assert "not a trusted proxy (it sent X-Forwarded-User)" in caplog.text
            assert "alice" not in caplog.text  # the claimed name is not believed, nor logged
            assert srv.ctx.metrics.rejected["proxy"] == 1

    run(body)


def test_the_view_pages_too_answer_only_the_proxy() -> None:
    async def body() -> None:
        nets = (ipaddress.ip_network("10.9.0.0/16"),)
        async with running_server(auth="proxy", trusted_proxies=nets) as srv:
            for path in ("view/", "view/ws", "view/static/terminal.js"):
                resp = await srv.fetch(path, {HEADER: "alice", **TOKEN_HEADERS})
                assert (resp.code, resp.body.decode().strip()) == (403, REFUSALS["proxy"]), path

    run(body)


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True), ("10.0.0.1", False),
     ("fe80::1%eth0", False), ("", False), (None, False)],
)  # fmt: skip
def test_trusted_proxies_are_matched_by_address(peer: str | None, trusted: bool) -> None:
    cfg = load_config(["--auth", "proxy"], {"MIXVLLM_TERMINAL_TOKEN": TOKEN})
    assert peer_trusted(cfg, peer) is trusted


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (None, "user"),
        ("", "user"),
        ("Alice", "user"),
        ("a;id", "user"),
        ("../etc", "user"),
        ("a" * 33, "user"),
        ("alicé", "user"),
        ("root", "account"),
        ("daemon", "account"),  # uid 1: a system account
        ("nobody", "account"),  # uid 65534: above --min-uid, still no one's
    ],
)
def test_only_unix_account_names_of_people_are_accepted(name: str | None, reason: str) -> None:
    async def body() -> None:
        async with running_server(auth="proxy") as srv:
            headers = dict(TOKEN_HEADERS)
            if name is not None:
                headers[HEADER] = name
            resp = await srv.fetch("", headers)
            assert resp.code == 403
            assert resp.body.decode().strip() == REFUSALS[reason]

    run(body)


def test_proxy_mode_still_needs_the_token_and_never_swaps_a_link_for_a_cookie() -> None:
    async def body() -> None:
        async with running_server(auth="proxy") as srv:
            assert (await srv.fetch("", {HEADER: "carol"})).code == 403
            resp = await srv.fetch(f"?token={TOKEN}", {HEADER: "carol"})
            assert resp.code == 403 and "Set-Cookie" not in resp.headers
            assert (await srv.fetch("", {HEADER: "carol", **TOKEN_HEADERS})).code == 200

    run(body)


def test_a_user_without_an_account_gets_one_line_and_no_session() -> None:
    require(os.geteuid() == 0, "root: only a root server runs sessions as the user's account")

    async def body() -> None:
        async with running_server(auth="proxy") as srv:
            headers = {HEADER: "carol", **TOKEN_HEADERS}
            client = await srv.connect(headers=headers, auth=False)
            assert await client.wait_closed() == protocol.CLOSE_POLICY
            assert client.frames == [[protocol.ERROR, "no Unix account on this server may run it"]]
            assert srv.ctx.manager.sessions == {}

    run(body)


def test_token_mode_ignores_the_header_and_has_one_owner() -> None:
    async def body() -> None:
        async with running_server() as srv:
            client = await srv.connect(headers={HEADER: "alice"})
            session = srv.ctx.manager.get(client.session_id)
            assert session is not None and session.owner == OWNER
            assert srv.ctx.manager.get(client.session_id, "alice") is None

    run(body)


# -- two users behind nginx, as their own Unix accounts --------------------------------------
@dataclasses.dataclass
class Stack:
    """The team stack (team_support.py) and the clients a test opened through it."""

    parts: TeamStack
    clients: list[Client] = dataclasses.field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parts, name)

    def http(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.proxy_port}/{path}"

    async def fetch(
        self, who: Account, path: str = "", method: str = "GET", **headers: str
    ) -> httpclient.HTTPResponse:
        req = httpclient.HTTPRequest(
            self.http(path), method=method, headers={**_basic(who), **headers},
            body="{}" if method == "POST" else None, follow_redirects=False,
        )  # fmt: skip
        return await httpclient.AsyncHTTPClient().fetch(req, raise_error=False)

    async def connect(self, who: Account, query: str = "") -> Client:
        url = f"ws://127.0.0.1:{self.proxy_port}/ws" + (f"?{query}" if query else "")
        conn = await websocket.websocket_connect(httpclient.HTTPRequest(url, headers=_basic(who)))
        client = Client(conn, auto_ack=True)
        self.clients.append(client)
        await client.wait_setup()
        return client

    async def close_clients(self) -> None:
        while self.clients:
            await self.clients.pop().close()


def _basic(who: Account) -> dict[str, str]:
    raw = f"{who.name}:{who.password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with team_stack(TOKEN, "--max-user-sessions", "2") as parts:
        yield Stack(parts)


async def _closing(stack: Stack, body: Callable[[], Awaitable[None]]) -> None:
    try:
        await body()
    finally:
        await stack.close_clients()


def test_a_session_runs_as_the_users_account_with_a_clean_environment(stack: Stack) -> None:
    async def body() -> None:
        alice = await stack.connect(stack.alice)
        uid = await say(alice, 'echo "UID<$(id -u)>"', "UID")
        groups = await say(alice, 'echo "GROUPS<$(id -Gn)>"', "GROUPS")
        home = await say(alice, 'echo "HOME<$HOME $SHELL $USER $(pwd)>"', "HOME")
        leaks = await say(
            alice, 'echo "LEAK<$(env | grep -c -e sk-server -e test-token -e MIXVLLM_TERMINAL)>"',
            "LEAK",
        )  # fmt: skip
        peek = await say(
            alice,
            f'echo "PEEK<$(cat /proc/{stack.server_pid}/environ >/dev/null 2>&1; echo $?)'
            f' $(ls {stack.bob.home} >/dev/null 2>&1; echo $?)'
            f' $(kill -0 {stack.server_pid} 2>/dev/null; echo $?)>"',
            "PEEK",
        )  # fmt: skip
        # A job of the shell (not a $(...) subshell, which keeps the shell's own ignores).
        # The chat export folder is hers: what she writes there, she (only) downloads.
        folder = await say(alice, 'echo "DIR<$MIXVLLM_CHAT_EXPORT>"', "DIR")
        wrote = await say(alice, f'echo "# hers" > {folder}/chat.md; echo "W<$?>"', "W")
        export = await stack.fetch(stack.alice, f"api/chat?session={alice.session_id}")
        theirs = await stack.fetch(stack.bob, f"api/chat?session={alice.session_id}")
        sigs = await say(alice, "sed -n 's/^SigIgn:.\\(.*\\)/SIG<\\1>/p' /proc/self/status", "SIG")
        assert uid == str(stack.alice.uid)
        assert groups.split() == ["alice", "team"]
        assert home.split() == [str(stack.alice.home), "/bin/bash", "alice", str(stack.alice.home)]
        assert leaks == "0"
        assert peek.split() == ["1", "2", "1"]  # no server env, no other home, no signalling
        assert sigs == "0000000000000000"
        assert wrote == "0"
        assert (export.code, export.body) == (200, b"# hers\n")
        assert theirs.code == 404

    run(lambda: _closing(stack, body))


def test_users_cannot_reach_each_others_sessions_by_url_api_or_websocket(stack: Stack) -> None:
    async def body() -> None:
        alice = await stack.connect(stack.alice)
        mine = alice.session_id
        # Bob guesses Alice's id on every route: he is told nothing about it.
        guess = await stack.connect(stack.bob, f"session={mine}")
        assert guess.setup is not None and guess.setup["reattached"] is False
        assert guess.session_id != mine
        restart = await stack.connect(stack.bob, f"session={mine}&restart=1")
        assert restart.session_id not in (mine, guess.session_id)
        for method in ("GET", "POST", "DELETE"):
            resp = await stack.fetch(stack.bob, f"api/share?session={mine}", method)
            assert resp.code == 404, method
        assert (await stack.fetch(stack.bob, f"api/chat?session={mine}")).code == 404
        # Bob's third session is over the per-user cap (2); Alice's own are not counted.
        third = await stack.connect(stack.bob)
        assert await third.wait_closed() == protocol.CLOSE_TRY_LATER
        assert "2 sessions already" in json.dumps(third.frames)
        # A header Alice sends herself is replaced by the proxy: she stays Alice.
        resp = await stack.fetch(
            stack.alice, f"api/share?session={guess.session_id}", **{HEADER: "bob"}
        )
        assert resp.code == 404
        # Alice's session was neither taken over nor ended, and is hers on every route.
        assert not alice.closed.is_set()
        assert await say(alice, 'echo "ME<$(id -un)>"', "ME") == "alice"
        share = await stack.fetch(stack.alice, f"api/share?session={mine}", "POST")
        assert share.code == 200 and json.loads(share.body)["url"].startswith("view/?share=")
        assert (await stack.fetch(stack.alice, f"api/share?session={mine}", "DELETE")).code == 204

    run(lambda: _closing(stack, body))


def test_only_the_proxy_may_name_a_user(stack: Stack) -> None:
    async def body() -> None:
        # Straight to the server from an address that is not the proxy's, token and all.
        headers = {HEADER: "alice", **TOKEN_HEADERS}
        req = httpclient.HTTPRequest(f"http://127.0.0.1:{stack.server_port}/", headers=headers)
        resp = await httpclient.AsyncHTTPClient().fetch(req, raise_error=False)
        assert resp.code == 403
        assert resp.body.decode().strip() == REFUSALS["proxy"]
        # Through the proxy without a login, or with a wrong password.
        assert (
            await httpclient.AsyncHTTPClient().fetch(stack.http(), raise_error=False)
        ).code == 401
        wrong = dataclasses.replace(stack.alice, password="not-hers")
        assert (await stack.fetch(wrong)).code == 401
        assert (await stack.fetch(stack.alice)).code == 200

    run(body)
    log = stack.log.read_text()
    assert "from 127.0.0.1, not a trusted proxy (it sent X-Forwarded-User)" in log
