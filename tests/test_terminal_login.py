"""Logging in (`--auth pam|oidc`, terminal_server/login/): the login store, throttling, CSRF,
the guard, the login page and logout, over real HTTP to an in-process server.

Real PAM with real accounts is test_terminal_pam.py's (a throwaway mount namespace).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from urllib.parse import urlencode

import pytest
from tornado import httpclient, websocket

from terminal_server.auth import REFUSALS
from terminal_server.config import ConfigError, load_config
from terminal_server.login import throttle as throttle_mod
from terminal_server.login.logins import LoginStore
from terminal_server.login.routes import WRONG, safe_next
from terminal_server.login.throttle import Throttle
from tests.terminal_support import TOKEN, Server, run, running_server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the store ---------------------------------------------------------------------------------
def test_a_login_is_a_random_id_that_ends_on_logout_age_or_idleness() -> None:
    clock = Clock()
    store = LoginStore(max_age=100, idle=30, clock=clock)
    a, b = store.start("alice", "pam", ["team"]), store.start("alice", "pam")
    assert a != b and len(a) >= 43  # 256 random bits, URL-safe
    login = store.lookup(a)
    assert login is not None
    assert (login.user, login.method, login.groups) == ("alice", "pam", ("team",))
    assert login.csrf != a and len(login.csrf) >= 32
    assert store.lookup(a + "x") is None and store.lookup("") is None and store.lookup(None) is None
    assert store.lookup("x" * 10_000) is None
    clock.now += 29
    assert store.lookup(a) is not None  # a request restarts the idle clock
    clock.now += 29
    assert store.lookup(a) is not None and store.lookup(b) is None  # b was idle 58 s
    for _ in range(5):
        clock.now += 20
        assert store.lookup(a) is not None or clock.now - 1000 >= 100
    assert store.lookup(a) is None  # 100 s after it began, however busy
    c = store.start("alice", "pam")
    assert store.end(c) is not None and store.lookup(c) is None and store.end(c) is None


def test_the_store_is_bounded_and_ends_a_users_logins_together() -> None:
    store = LoginStore(max_age=100, idle=100, max_count=3, clock=Clock())
    first, second = store.start("alice", "pam"), store.start("bob", "pam")
    store.lookup(first)  # used: the least recently used is now bob's
    third, fourth = store.start("alice", "oidc"), store.start("carol", "pam")
    assert len(store) == 3 and store.lookup(second) is None
    assert store.users() == {"alice": 2, "carol": 1}
    assert store.end_user("alice") == 2
    assert store.lookup(first) is None and store.lookup(third) is None
    assert store.lookup(fourth) is not None


# -- throttling -----------------------------------------------------------------------------
def _fail(t: Throttle, user: str, address: str, n: int) -> None:
    for _ in range(n):
        t.attempt(user, address)


def test_failures_past_the_free_ones_double_the_wait_per_user_and_per_address() -> None:
    clock = Clock()
    t = Throttle(clock=clock)
    _fail(t, "alice", "10.0.0.1", throttle_mod.FREE_PER_USER)
    assert t.retry_after("alice", "10.0.0.1") == 0
    _fail(t, "alice", "10.0.0.1", 1)
    assert t.retry_after("alice", "10.0.0.9") == throttle_mod.BASE_DELAY  # from anywhere
    assert t.retry_after("bob", "10.0.0.1") == 0  # the address has 14 free ones left
    _fail(t, "alice", "10.0.0.1", 1)
    assert t.retry_after("alice", "10.0.0.1") == 2 * throttle_mod.BASE_DELAY
    _fail(t, "alice", "10.0.0.1", 30)
    assert t.retry_after("alice", "10.0.0.1") == throttle_mod.MAX_DELAY
    assert t.retry_after("bob", "10.0.0.1") == throttle_mod.MAX_DELAY  # the address, too
    clock.now += throttle_mod.MAX_DELAY
    assert t.retry_after("alice", "10.0.0.1") == 0
    clock.now += throttle_mod.FORGET
    assert t.retry_after("alice", "10.0.0.1") == 0 and len(t) == 0  # forgotten


def test_a_success_clears_the_user_but_not_the_addresss_other_failures() -> None:
    t = Throttle(clock=Clock())
    _fail(t, "victim", "10.0.0.1", throttle_mod.FREE_PER_ADDRESS + 1)
    assert t.retry_after("mallory", "10.0.0.1") > 0
    t.attempt("mallory", "10.0.0.1")
    t.succeeded("mallory", "10.0.0.1")  # her own account: her attempt is taken back, no more
    assert t.retry_after("mallory", "10.0.0.1") > 0
    assert t.retry_after("victim", "10.0.0.2") > 0


def test_the_wait_runs_from_when_the_failure_is_known() -> None:
    clock = Clock()
    t = Throttle(clock=clock)
    _fail(t, "alice", "10.0.0.1", throttle_mod.FREE_PER_USER + 1)
    clock.now += 2.0  # PAM took its time to say no
    assert t.retry_after("alice", "10.0.0.1") == 0
    t.failed("alice", "10.0.0.1")
    assert t.retry_after("alice", "10.0.0.1") == throttle_mod.BASE_DELAY


def test_throttle_memory_is_bounded() -> None:
    t = Throttle(max_keys=100, clock=Clock())
    for i in range(1000):
        t.attempt(f"user{i}", f"10.0.{i // 250}.{i % 250}")
    assert len(t) == 100


# -- next, config -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/", "/"), ("/?session=abc", "/?session=abc"), (None, "/"), ("", "/"),
        ("https://evil.example/", "/"), ("//evil.example/", "/"), ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"), ("relative", "/"), ("/login", "/"), ("/logout", "/"),
        ("/\r\nSet-Cookie: x", "/"), ("/%0d%0a", "/%0d%0a"),
    ],
)  # fmt: skip
def test_next_is_only_a_path_of_this_server(value: str | None, expected: str) -> None:
    cfg = load_config(["--auth", "pam"], {})

    class Ctx:
        config = cfg

    assert safe_next(Ctx(), value) == expected  # type: ignore[arg-type]


def test_next_stays_under_the_base_path() -> None:
    cfg = load_config(["--auth", "pam", "--base-path", "/term"], {})

    class Ctx:
        config = cfg

    assert safe_next(Ctx(), "/term/?session=a") == "/term/?session=a"  # type: ignore[arg-type]
    assert safe_next(Ctx(), "/other/") == "/term/"  # type: ignore[arg-type]


def test_pam_mode_is_built_from_the_option_table() -> None:
    env = {"MIXVLLM_TERMINAL_ALLOWED_GROUPS": "gpu, team"}
    cfg = load_config(["--auth", "pam", "--allowed-users", "alice,bob", "--login-idle", "60"], env)
    assert (cfg.auth, cfg.team, cfg.pam_service) == ("pam", True, "mixvllm")
    assert cfg.allowed_users == {"alice", "bob"} and cfg.allowed_groups == {"gpu", "team"}
    assert (cfg.login_idle, cfg.login_max_age, cfg.max_logins) == (60, 12 * 3600, 1000)
    assert cfg.audit_log is not None  # kept by default in team modes
    for argv, message in (
        (["--auth", "pam", "--no-auth"], "exclude each other"),
        (["--auth", "pam", "--pam-service", "../shadow"], "a file name in /etc/pam.d"),
        (["--auth", "pam", "--login-idle", "0"], "must be positive"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(argv, {})


# -- the guard, the page, CSRF, logout -----------------------------------------------------------
def _cookies(resp: httpclient.HTTPResponse) -> dict[str, str]:
    """name -> the whole Set-Cookie line."""
    return {line.split("=", 1)[0]: line for line in resp.headers.get_list("Set-Cookie")}


def _login_cookie(srv: Server, user: str = "alice") -> tuple[str, str]:
    name = f"mixvllm_login_{srv.ctx.config.public_port}"
    return name, srv.ctx.logins.start(user, "pam")


def _as(srv: Server, user: str = "alice") -> tuple[dict[str, str], str]:
    """Headers of a logged-in browser of `user`, and the login's CSRF token."""
    name, value = _login_cookie(srv, user)
    login = srv.ctx.logins.lookup(value)
    assert login is not None
    return {"Cookie": f"{name}={value}"}, login.csrf


def test_without_a_login_pages_go_to_the_login_page_and_the_rest_gets_401() -> None:
    async def body() -> None:
        async with running_server(auth="pam") as srv:
            page = await srv.fetch("?session=abc")
            assert page.code == 302
            assert page.headers["Location"] == "/login?" + urlencode({"next": "/?session=abc"})
            for path in ("api/status", "api/share?session=x", "static/terminal.js", "metrics"):
                resp = await srv.fetch(path)
                assert (resp.code, resp.body.decode().strip()) == (401, REFUSALS["login"]), path
            # The server's token is no way in: in login modes only a login is.
            bearer = {"Authorization": f"Bearer {TOKEN}", **srv.auth_headers()}
            assert (await srv.fetch("api/status", bearer)).code == 401
            with pytest.raises(httpclient.HTTPClientError) as err:
                await websocket.websocket_connect(srv.ws)
            assert err.value.code == 401
            assert srv.ctx.metrics.rejected["login"] >= 6

    run(body)


def test_the_login_page_has_a_csrf_form_its_own_csp_and_no_login_needed() -> None:
    async def body() -> None:
        async with running_server(auth="pam") as srv:
            resp = await srv.fetch("login?" + urlencode({"next": "/?session=a&x=<b>"}))
            assert resp.code == 200
            page = resp.body.decode()
            token = re.search(r'name="_xsrf" value="([^"]+)"', page)
            assert token is not None and len(token.group(1)) >= 32
            assert 'name="next" value="/?session=a&amp;x=&lt;b&gt;"' in page
            assert "form-action 'self'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Frame-Options"] == "DENY"
            prelogin = _cookies(resp)[f"mixvllm_prelogin_{srv.ctx.config.public_port}"]
            assert "HttpOnly" in prelogin and "SameSite=Lax" in prelogin and "Path=/" in prelogin
            assert "Secure" not in prelogin  # plain http, no https public URL
            for asset in ("static/login.css", "static/login.js"):
                assert (await srv.fetch(asset)).code == 200
            assert (await srv.fetch("login", {"Host": "evil.example"})).code == 403

    run(body)


def test_a_login_reaches_the_page_with_its_csrf_token_and_state_changes_need_it() -> None:
    async def body() -> None:
        async with running_server(auth="pam") as srv:
            headers, csrf = _as(srv)
            page = await srv.fetch("", headers)
            assert page.code == 200
            assert f'<meta name="mixvllm-csrf" content="{csrf}">' in page.body.decode()
            assert '<meta name="mixvllm-user" content="alice">' in page.body.decode()
            # (Sessions as the user's account need the account: test_terminal_pam.py.)
            share = "api/share?session=no-such-session"
            for method, extra in (
                ("POST", {}),
                ("POST", {"X-CSRF-Token": "wrong"}),
                ("DELETE", {}),
                ("POST", {"X-CSRF-Token": _as(srv, "bob")[1]}),  # another login's token
            ):
                resp = await srv.fetch(
                    share, {**headers, **extra}, method=method,
                    body="{}" if method == "POST" else None,
                )  # fmt: skip
                assert (resp.code, resp.body.decode().strip()) == (403, REFUSALS["csrf"])
            for method in ("POST", "DELETE"):  # past the guard: the handler's own answer
                passed = await srv.fetch(
                    share, {**headers, "X-CSRF-Token": csrf}, method=method,
                    body="{}" if method == "POST" else None,
                )  # fmt: skip
                assert passed.code == 404, method

    run(body)


def test_logout_needs_the_csrf_token_and_ends_the_login(tmp_path: Path) -> None:
    async def body() -> None:
        audit = tmp_path / "audit.jsonl"
        async with running_server(auth="pam", audit_log=audit) as srv:
            headers, csrf = _as(srv)
            refused = await srv.fetch("logout", headers, method="POST", body="")
            assert (refused.code, refused.body.decode().strip()) == (403, REFUSALS["csrf"])
            form = urlencode({"_xsrf": csrf})
            out = await srv.fetch("logout", headers, method="POST", body=form)
            assert (out.code, out.headers["Location"]) == (303, "/login")
            cleared = _cookies(out)[f"mixvllm_login_{srv.ctx.config.public_port}"]
            assert "Max-Age=0" in cleared or "expires=" in cleared.lower()
            assert (await srv.fetch("", headers)).code == 302  # the old cookie is dead
            assert (await srv.fetch("logout", headers, method="POST", body=form)).code == 401
            events = [json.loads(line) for line in audit.read_text().splitlines()]
            assert [(e["event"], e["user"], e["method"]) for e in events] == [
                ("logout", "alice", "pam")
            ]

    run(body)


def test_cookies_are_secure_behind_an_https_public_url() -> None:
    async def body() -> None:
        async with running_server(auth="pam", public_url="https://gpu.example/") as srv:
            resp = await srv.fetch("login")
            prelogin = _cookies(resp)["mixvllm_prelogin_443"]
            assert "Secure" in prelogin and "HttpOnly" in prelogin

    run(body)


def test_a_login_form_without_its_csrf_token_is_refused_before_any_password_check(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        async with running_server(auth="pam") as srv:
            form = urlencode({"user": "alice", "password": "x", "_xsrf": "forged"})
            resp = await srv.fetch("login", method="POST", body=form)
            assert resp.code == 403 and "This form has expired" in resp.body.decode()
            assert srv.ctx.metrics.rejected["csrf"] == 1

    run(body)


async def _form(srv: Server) -> tuple[dict[str, str], str]:
    resp = await srv.fetch("login")
    name = f"mixvllm_prelogin_{srv.ctx.config.public_port}"
    cookie = _cookies(resp)[name].split(";")[0]
    token = re.search(r'name="_xsrf" value="([^"]+)"', resp.body.decode())
    assert token is not None
    return {"Cookie": cookie}, token.group(1)


def test_wrong_logins_get_one_answer_whoever_the_account_and_then_are_throttled(
    tmp_path: Path,
) -> None:
    pytest.importorskip("pamela")

    async def body() -> None:
        audit = tmp_path / "audit.jsonl"
        async with running_server(auth="pam", audit_log=audit) as srv:
            headers, token = await _form(srv)

            async def attempt(user: str, password: str) -> httpclient.HTTPResponse:
                form = urlencode({"user": user, "password": password, "_xsrf": token})
                return await srv.fetch("login", headers, method="POST", body=form)

            # root, a system account, no such account: the same answer, no cookie; and eight
            # attempts of one name at once (the client's limit is 10) cannot all get past the
            # throttle before the first fails: five are free, the sixth is let through but
            # makes the next wait.
            answers = await asyncio.gather(
                attempt("root", "secret-pw"), attempt("daemon", "secret-pw"),
                attempt("nosuchuser", ""),
                *(attempt("nosuchuser", "secret-pw") for _ in range(7)),
            )  # fmt: skip
            codes = sorted(resp.code for resp in answers)
            assert codes == [401] * 8 + [429] * 2
            for resp in answers:
                assert not any(c.startswith("mixvllm_login_") for c in _cookies(resp))
                if resp.code == 401:
                    assert WRONG in resp.body.decode()
                else:
                    assert "Too many failed logins" in resp.body.decode()
                    assert int(resp.headers["Retry-After"]) >= 1
            events = [json.loads(line) for line in audit.read_text().splitlines()]
            results = sorted((e["user"], e["result"]) for e in events)
            assert results == sorted(
                [("root", "failed"), ("daemon", "failed")] + [("nosuchuser", "failed")] * 6
                + [("nosuchuser", "throttled")] * 2
            )  # fmt: skip
            assert {e["address"] for e in events} == {"127.0.0.1"}
            assert "secret-pw" not in audit.read_text()

    run(body)
