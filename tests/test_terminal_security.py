"""One test per security point of the terminal server."""

from __future__ import annotations

import hmac
import json
import logging

import pytest
from tornado import httpclient, websocket

from terminal_server import protocol
from terminal_server.app import make_context, public_url
from terminal_server.config import Config, ConfigError, load_config

from .terminal_support import TOKEN, run, running_server

PROTECTED = ("", "healthz", "metrics", "static/terminal.js", "vendor/xterm/lib/xterm.js")


def test_every_http_route_needs_the_token() -> None:
    async def body() -> None:
        async with running_server() as srv:
            for path in PROTECTED:
                r = await srv.fetch(path)
                assert r.code == 403, path
                wrong = await srv.fetch(path, {"Authorization": "Bearer wrong-token-xxxx"})
                assert wrong.code == 403, path
                ok = await srv.fetch(path, {"Authorization": f"Bearer {TOKEN}"})
                assert ok.code == 200, path
            assert srv.ctx.metrics.rejected["token"] == 2 * len(PROTECTED)

    run(body)


def test_websocket_upgrade_needs_the_token() -> None:
    async def body() -> None:
        async with running_server() as srv:
            for headers in ({}, {"Cookie": f"{srv.ctx.cookie_name}=nope-nope-nope"}):
                req = httpclient.HTTPRequest(srv.ws, headers=headers)
                with pytest.raises(httpclient.HTTPClientError) as err:
                    await websocket.websocket_connect(req)
                assert err.value.code == 403
            assert srv.ctx.manager.sessions == {}

    run(body)


def test_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    async def body() -> None:
        async with running_server() as srv:
            r = await srv.fetch("healthz", {"Authorization": "Bearer guess-guess-guess"})
            assert r.code == 403

    run(body)
    assert (b"guess-guess-guess", TOKEN.encode()) in calls


def test_query_token_becomes_a_strict_cookie_and_is_redirected_away() -> None:
    async def body() -> None:
        async with running_server() as srv:
            r = await srv.fetch(f"?token={TOKEN}&fontSize=18&session=abc")
            assert r.code == 302
            location = r.headers["Location"]
            assert TOKEN not in location
            assert "fontSize=18" in location
            assert "session=abc" in location
            cookie = r.headers["Set-Cookie"]
            assert cookie.startswith(f"{srv.ctx.cookie_name}={TOKEN}")
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            assert r.headers["Referrer-Policy"] == "no-referrer"
            page = await srv.fetch("", {"Cookie": cookie.split(";")[0]})
            assert page.code == 200
            bad = await srv.fetch("?token=wrong-wrong-wrong")
            assert bad.code == 403
            assert "Set-Cookie" not in bad.headers

    run(body)


def test_token_never_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with running_server() as srv:
            await srv.fetch(f"?token={TOKEN}")
            await srv.fetch(f"healthz?token={TOKEN}")
            await srv.fetch(f"nonexistent?token={TOKEN}")
            await srv.fetch("?token=wrong-token-value")
            c = await srv.connect(f"token={TOKEN}")
            c.send_raw("junk")
            await c.wait_closed()

    with caplog.at_level(logging.DEBUG):
        run(body)
    assert caplog.records, "expected access log lines"
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert "wrong-token-value" not in record.getMessage()


def test_security_headers_and_strict_csp() -> None:
    async def body() -> None:
        async with running_server() as srv:
            r = await srv.fetch("", srv.auth_headers())
            assert r.code == 200
            csp = dict(
                part.strip().split(" ", 1)
                for part in r.headers["Content-Security-Policy"].split(";")
            )
            assert csp["default-src"] == "'none'"
            assert csp["script-src"] == "'self'"
            assert csp["connect-src"] == "'self'"
            assert csp["frame-ancestors"] == "'none'"
            assert r.headers["Referrer-Policy"] == "no-referrer"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert b"<script>" not in r.body  # no inline scripts for the CSP to allow

    run(body)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "file://"])
def test_cross_origin_websocket_is_refused(origin: str) -> None:
    async def body() -> None:
        async with running_server() as srv:
            with pytest.raises(httpclient.HTTPClientError) as err:
                await srv.connect(headers={"Origin": origin})
            assert err.value.code == 403
            assert srv.ctx.metrics.rejected["origin"] == 1
            assert srv.ctx.manager.sessions == {}

    run(body)


def test_an_origin_with_another_scheme_is_refused() -> None:
    # https://host:P is another origin than http://host:P, though host and port match.
    async def body() -> None:
        async with running_server() as srv:
            with pytest.raises(httpclient.HTTPClientError) as err:
                await srv.connect(headers={"Origin": f"https://127.0.0.1:{srv.port}"})
            assert err.value.code == 403
            assert srv.ctx.metrics.rejected["origin"] == 1
            assert srv.ctx.manager.sessions == {}

    run(body)


def test_same_origin_and_allow_listed_origins_are_accepted() -> None:
    async def body() -> None:
        async with running_server(allowed_origins=("https://term.example.com",)) as srv:
            same = await srv.connect(headers={"Origin": f"http://127.0.0.1:{srv.port}"})
            assert same.setup is not None
            listed = await srv.connect(headers={"Origin": "https://term.example.com"})
            assert listed.setup is not None

    run(body)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8888", "192.168.1.5", "[::2]"])
def test_dns_rebinding_host_is_refused_on_loopback(host: str) -> None:
    async def body() -> None:
        async with running_server() as srv:
            r = await srv.fetch("healthz", {**srv.auth_headers(), "Host": host})
            assert r.code == 403
            with pytest.raises(httpclient.HTTPClientError) as err:
                await srv.connect(headers={"Host": host})
            assert err.value.code == 403
            ok = await srv.fetch("healthz", {**srv.auth_headers(), "Host": f"localhost:{srv.port}"})
            assert ok.code == 200

    run(body)


def test_no_auth_only_on_loopback() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        load_config(["--no-auth", "--host", "0.0.0.0"], env={})
    cfg = load_config(["--no-auth"], env={})
    assert cfg.no_auth

    async def body() -> None:
        async with running_server(no_auth=True, token=None) as srv:
            r = await srv.fetch("healthz")
            assert r.code == 200
            c = await srv.connect(auth=False)
            assert c.setup is not None

    run(body)


def test_generated_token_is_printed_in_the_url_once() -> None:
    ctx = make_context(Config(port=9999, token=None))
    assert ctx.token is not None
    assert len(ctx.token) >= 32
    assert public_url(ctx) == f"http://127.0.0.1:9999/?token={ctx.token}"
    configured = make_context(Config(port=9999, token="operator-secret"))
    assert "operator-secret" not in public_url(configured)


def test_oversized_message_closes_with_1009() -> None:
    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect()
            c.type("x" * (srv.ctx.config.max_message_bytes + 10))
            assert await c.wait_closed() == protocol.CLOSE_TOO_BIG
            other = await srv.connect()
            other.type("echo fine\r")
            await other.expect("fine")

    run(body)


MALFORMED: list[str | bytes] = [
    "",
    "{",
    "null",
    "42",
    '"stdin"',
    "{}",
    "[]",
    "[1, 2]",
    '["nope"]',
    '["stdin"]',
    '["stdin", 5]',
    '["stdin", "a", "b"]',
    '["stdin", null]',
    '["set_size", -1, 80]',
    '["set_size", 24, 0]',
    '["set_size", 24, 100000]',
    '["set_size", 24.5, 80]',
    '["set_size", true, 80]',
    '["set_size", "24", "80"]',
    '["set_size", 24]',
    '["ack"]',
    '["ack", 0]',
    '["ack", -5]',
    '["ack", 1e9]',
    '["ack", 999999]',
    '["ack_bytes", 0]',
    '["ack_bytes", 4096]',  # byte acks on a connection that did not ask for them
    "[" * 100000,
    '["stdin", "\\ud800"] trailing',
    b"\x00\x01\x02binary",
    b"",
]


def test_malformed_frames_close_cleanly_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    codes: list[int | None] = []

    async def body() -> None:
        async with running_server() as srv:
            bystander = await srv.connect()
            for frame in MALFORMED:
                c = await srv.connect()
                c.send_raw(frame)
                codes.append(await c.wait_closed())
                await c.close()
            bystander.type("echo still'-'serving\r")
            await bystander.expect("still-serving")
            assert bystander.close_code is None
            assert srv.ctx.metrics.protocol_errors == len(MALFORMED)

    with caplog.at_level(logging.WARNING, "mixvllm.terminal"):
        run(body)
    for frame, code in zip(MALFORMED, codes, strict=True):
        expected = (
            protocol.CLOSE_UNSUPPORTED if isinstance(frame, bytes) else protocol.CLOSE_INVALID
        )
        assert code == expected, frame
    closing = [r for r in caplog.records if "closing WebSocket" in r.getMessage()]
    assert len(closing) == len(MALFORMED)
    assert not any(r.exc_info for r in caplog.records), "no tracebacks"


def test_valid_frames_round_trip_after_fuzzing_json_values() -> None:
    # Valid shapes with odd but legal content must not close the socket.
    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect()
            c.send(protocol.STDIN, "")
            c.send(protocol.STDIN, "\ud800")  # lone surrogate: replaced, not fatal
            c.send(protocol.SET_SIZE, 1, 1)
            c.send(protocol.SET_SIZE, 1000, 1000)
            c.send(protocol.SET_SIZE, 24, 80)
            c.type("\x15echo alive'-'after\r")
            await c.expect("alive-after")
            assert c.close_code is None

    run(body)


def test_healthz_is_json() -> None:
    async def body() -> None:
        async with running_server() as srv:
            r = await srv.fetch("healthz", srv.auth_headers())
            assert r.headers["Content-Type"].startswith("application/json")
            assert set(json.loads(r.body)) >= {"status", "sessions", "version"}

    run(body)
