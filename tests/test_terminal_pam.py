"""`--auth pam` for real: accounts with real password hashes in a throwaway mount namespace
(team_support.py), the project's PAM service file, the server as root so that each user's
sessions run as their own account. Users log in through the login page over real HTTP, with
cookies as a browser keeps them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
from tornado import httpclient, websocket

from terminal_server import protocol
from terminal_server.auth import REFUSALS
from terminal_server.login.routes import WRONG
from tests.team_support import Account, PamStack, pam_stack, say
from tests.terminal_support import Client, run


@pytest.fixture(scope="module")
def stack() -> Iterator[PamStack]:
    pytest.importorskip("pamela")
    with pam_stack("--max-user-sessions", "3") as parts:
        yield parts


@dataclasses.dataclass
class Browser:
    """One browser profile: its cookie jar, its CSRF token from the last page it loaded."""

    stack: PamStack
    cookies: dict[str, str] = dataclasses.field(default_factory=dict)
    csrf: str = ""
    clients: list[Client] = dataclasses.field(default_factory=list)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        jar = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return {**({"Cookie": jar} if jar else {}), **(extra or {})}

    async def fetch(
        self, path: str = "", method: str = "GET", body: str | None = None, **headers: str
    ) -> httpclient.HTTPResponse:
        req = httpclient.HTTPRequest(
            self.stack.url + path, method=method, headers=self._headers(headers), body=body,
            follow_redirects=False,
        )  # fmt: skip
        resp = await httpclient.AsyncHTTPClient().fetch(req, raise_error=False)
        for line in resp.headers.get_list("Set-Cookie"):
            for name, morsel in SimpleCookie(line).items():
                if not morsel.value or morsel["max-age"] == "0":  # cleared (a past expiry)
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return resp

    async def login(self, who: Account, password: str | None = None) -> httpclient.HTTPResponse:
        page = await self.fetch("login?next=%2F")
        token = re.search(r'name="_xsrf" value="([^"]+)"', page.body.decode())
        assert page.code == 200 and token is not None
        form = {"user": who.name, "password": who.password if password is None else password,
                "_xsrf": token.group(1), "next": "/"}  # fmt: skip
        return await self.fetch("login", "POST", urlencode(form))

    async def page(self) -> httpclient.HTTPResponse:
        resp = await self.fetch()
        meta = re.search(r'<meta name="mixvllm-csrf" content="([^"]+)">', resp.body.decode())
        self.csrf = meta.group(1) if meta else ""
        return resp

    async def connect(self, query: str = "") -> Client:
        url = self.stack.url.replace("http:", "ws:") + "ws" + (f"?{query}" if query else "")
        conn = await websocket.websocket_connect(
            httpclient.HTTPRequest(url, headers=self._headers())
        )
        client = Client(conn, auto_ack=True)
        self.clients.append(client)
        await client.wait_setup()
        return client

    async def close(self) -> None:
        while self.clients:
            await self.clients.pop().close()


async def _logged_in(stack: PamStack, who: Account) -> Browser:
    browser = Browser(stack)
    resp = await browser.login(who)
    assert (resp.code, resp.headers.get("Location")) == (303, "/"), resp.body
    assert (await browser.page()).code == 200 and browser.csrf
    return browser


def test_two_users_log_in_and_each_session_runs_as_their_own_account(stack: PamStack) -> None:
    async def body() -> None:
        alice, bob = await _logged_in(stack, stack.alice), await _logged_in(stack, stack.bob)
        try:
            mine = await alice.connect()
            uid = await say(mine, 'echo "UID<$(id -u) $(id -g)>"', "UID")
            groups = await say(mine, 'echo "GROUPS<$(id -Gn)>"', "GROUPS")
            home = await say(mine, 'echo "HOME<$HOME $SHELL $USER $(pwd)>"', "HOME")
            leaks = await say(
                mine, 'echo "LEAK<$(env | grep -c -e sk-server -e MIXVLLM_TERMINAL -e mixvllm_)>"',
                "LEAK",
            )  # fmt: skip
            peek = await say(
                mine,
                f'echo "PEEK<$(cat /proc/{stack.server_pid}/environ >/dev/null 2>&1; echo $?)'
                f' $(ls {stack.bob.home} >/dev/null 2>&1; echo $?)'
                f' $(kill -0 {stack.server_pid} 2>/dev/null; echo $?)>"',
                "PEEK",
            )  # fmt: skip
            assert uid.split() == [str(stack.alice.uid)] * 2
            assert groups.split() == ["alice", "team"]
            assert home.split() == [
                str(stack.alice.home),
                "/bin/bash",
                "alice",
                str(stack.alice.home),
            ]
            assert leaks == "0"
            assert peek.split() == ["1", "2", "1"]
            theirs = await bob.connect()
            assert await say(theirs, 'echo "ME<$(id -un)>"', "ME") == "bob"
            # Bob tries Alice's session on every route, with his own valid login and token.
            guess = await bob.connect(f"session={mine.session_id}")
            assert guess.setup is not None and guess.setup["reattached"] is False
            assert guess.session_id != mine.session_id
            for method in ("GET", "POST", "DELETE"):
                resp = await bob.fetch(
                    f"api/share?session={mine.session_id}", method,
                    "{}" if method == "POST" else None, **{"X-CSRF-Token": bob.csrf},
                )  # fmt: skip
                assert resp.code == 404, method
            assert (await bob.fetch(f"api/chat?session={mine.session_id}")).code == 404
            # Alice's own share: refused without her CSRF token (or with Bob's), then made.
            share = f"api/share?session={mine.session_id}"
            for token in ("", bob.csrf):
                resp = await alice.fetch(share, "POST", "{}", **{"X-CSRF-Token": token})
                assert (resp.code, resp.body.decode().strip()) == (403, REFUSALS["csrf"])
            made = await alice.fetch(share, "POST", "{}", **{"X-CSRF-Token": alice.csrf})
            assert made.code == 200 and json.loads(made.body)["url"].startswith("view/?share=")
            assert not mine.closed.is_set()
        finally:
            await alice.close()
            await bob.close()
        events = [json.loads(line) for line in stack.audit.read_text().splitlines()]
        logins = [(e["user"], e["result"]) for e in events if e["event"] == "login"]
        assert ("alice", "ok") in logins and ("bob", "ok") in logins

    run(body)


def test_wrong_passwords_system_accounts_and_unknown_names_get_the_same_answer(
    stack: PamStack,
) -> None:
    async def body() -> None:
        attempts = [
            (stack.alice, "not-her-password"),
            (stack.sysop, stack.sysop.password),  # right password, uid 901: never
            (dataclasses.replace(stack.alice, name="nosuchuser"), "whatever"),
            (dataclasses.replace(stack.alice, name="root"), "whatever"),
        ]
        for who, password in attempts:
            browser = Browser(stack)
            resp = await browser.login(who, password)
            text = re.sub(r'value="[^"]*"', "", resp.body.decode())
            assert (resp.code, WRONG in text) == (401, True), who.name
            assert not any(name.startswith("mixvllm_login_") for name in browser.cookies)
            assert (await browser.fetch()).code == 302  # still sent to the login page
        log = stack.log.read_text()
        assert "login failed: sysop" in log and "system account" in log
        for _, password in attempts:
            assert password not in log and password not in stack.audit.read_text()

    run(body)


def test_logout_ends_access_and_the_session_waits_for_the_next_login(stack: PamStack) -> None:
    async def body() -> None:
        alice = await _logged_in(stack, stack.alice)
        elsewhere = await _logged_in(stack, stack.alice)  # her other browser
        try:
            mine = await alice.connect()
            await say(mine, 'X=kept; echo "SET<$X>"', "SET")
            other = await elsewhere.connect()
            old = dict(alice.cookies)
            refused = await alice.fetch("logout", "POST", "")
            assert (refused.code, refused.body.decode().strip()) == (403, REFUSALS["csrf"])
            out = await alice.fetch("logout", "POST", "", **{"X-CSRF-Token": alice.csrf})
            assert (out.code, out.headers["Location"]) == (303, "/login")
            # This login's open tab is closed; her other browser's login and tab live on.
            assert await mine.wait_closed() == protocol.CLOSE_POLICY
            assert not other.closed.is_set()
            assert (await elsewhere.fetch()).code == 200
            assert not any(name.startswith("mixvllm_login_") for name in alice.cookies)
            stale = Browser(stack, cookies=old)  # the old cookie, replayed: dead
            assert (await stale.fetch()).code == 302
            assert (await stale.fetch("api/status")).code == 401
            with pytest.raises(httpclient.HTTPClientError) as err:
                await stale.connect(f"session={mine.session_id}")
            assert err.value.code == 401
            again = await _logged_in(stack, stack.alice)
            back = await again.connect(f"session={mine.session_id}")
            assert back.setup is not None and back.setup["reattached"] is True
            assert await say(back, 'echo "GOT<$X>"', "GOT") == "kept"
            await again.close()
        finally:
            await alice.close()
            await elsewhere.close()
        events = [json.loads(line) for line in stack.audit.read_text().splitlines()]
        assert any(e["event"] == "logout" and e["user"] == "alice" for e in events)

    run(body)


def test_failed_logins_are_throttled_even_with_the_right_password_after(stack: PamStack) -> None:
    async def body() -> None:
        browser = Browser(stack)
        codes = [(await browser.login(stack.carol, f"wrong-{i}")).code for i in range(6)]
        assert codes == [401] * 6
        right = await browser.login(stack.carol)
        assert right.code == 429 and "Too many failed logins" in right.body.decode()
        assert int(right.headers["Retry-After"]) >= 1
        assert not any(name.startswith("mixvllm_login_") for name in browser.cookies)
        assert (await _logged_in(stack, stack.bob)).csrf  # another user is not held up

    run(body)
    events = [json.loads(line) for line in stack.audit.read_text().splitlines()]
    assert ("carol", "throttled") in [(e["user"], e.get("result")) for e in events]
