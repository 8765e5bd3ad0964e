"""The server's edge cases: odd tokens, hostile input and the logs, frozen clients, big frames."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import tracemalloc
from pathlib import Path
from urllib.parse import quote, urlparse

import pytest

from terminal_server import protocol
from terminal_server.__main__ import main
from terminal_server.config import ConfigError, build_parser, load_config
from terminal_server.scrollback import Scrollback

from .docs_support import section
from .support import wait_for_async
from .terminal_support import (
    ROOT,
    TOKEN,
    Server,
    open_raw,
    raw_exchange,
    run,
    running_server,
    server_process,
)


@pytest.mark.parametrize(
    "token", ["has space-in-it", "tab\tin-the-token", "nul\x00-in-token", "nbsp\xa0-in-token"]
)
def test_token_with_whitespace_or_control_characters_is_refused_at_startup(
    token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="--token must not contain spaces or control"):
        load_config([], env={"MIXVLLM_TERMINAL_TOKEN": token})
    assert main(["--token", token]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert token not in err


def test_a_500_logs_neither_the_query_string_nor_the_exception_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A broken install (no index.html) is a real 500; its log line must stay token-free.
    async def body() -> None:
        async with running_server(static_dir=tmp_path) as srv:
            r = await srv.fetch(f"?session={TOKEN}", srv.auth_headers())
            assert r.code == 500
            assert TOKEN.encode() not in r.body

    with caplog.at_level(logging.DEBUG):
        run(body)
    text = "\n".join(caplog.text.splitlines())
    assert TOKEN not in text
    assert "FileNotFoundError" in text  # the type and the stack are kept for the bug report
    assert "500 GET /" in text


def _upgrade(port: int, headers: str) -> str:
    return (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )


def _token_pieces(token: str) -> list[str]:
    """12-character windows of every form a token takes on the wire or in a repr."""
    forms = {
        token,
        quote(token, safe=""),
        repr(token.encode())[2:-1],
        token.encode().decode("latin-1"),
        repr(token.encode().decode("latin-1"))[1:-1],
    }
    return sorted({f[i : i + 12] for f in forms for i in range(len(f) - 11)})


def _hostile_requests(token: str, port: int) -> list[bytes]:
    q = quote(token, safe="").encode()
    raw = token.encode()
    host = f"127.0.0.1:{port}".encode()
    cookie = b"Cookie: mixvllm_token_%d=%s\r\n" % (port, q)
    upgrade = (
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )

    def get(target: bytes, headers: bytes = b"") -> bytes:
        return b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + headers + b"\r\n"

    return [
        get(b"/?token=" + q + b"%ff"),  # Tornado: "Invalid unicode in token: b'...'"
        get(b"/?token=" + q + b"%20x"),
        get(b"/?token=" + raw + b"\xff"),
        get(b"/healthz?token=" + q + b"%ff", cookie),
        get(b"/ws?session=" + q + b"%ff&token=" + q, cookie + upgrade),
        get(b"/ws?rows=" + q + b"%ff", cookie + upgrade),
        get(b"/" + q),
        get(b"/vendor/" + q + b"%00?token=" + q, cookie),
        get(b"/static/" + q + b"%00", cookie),
        get(b"/healthz", b"Authorization: Bearer " + raw + b"\x01\r\n"),
        get(b"/healthz", b"Authorization: Bearer " + raw + b"x\r\n"),
        get(b"/healthz", b"Cookie: mixvllm_token_1=" + raw + b"\x00\r\n"),
        get(b"/healthz", raw + b"\r\n"),  # a header line without a colon
        get(b"/ws", cookie + upgrade + b"Origin: http://" + q + b".example\r\n"),
        b"GET /?token=" + q + b" junk HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
        b"GET /?token=" + raw + b" HTTP/1.1\r\nHost: " + raw + b"\r\n\r\n",
        b"POST /?token=" + q + b" HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: x\r\n\r\n",
    ]


def test_no_log_line_contains_the_token_whatever_the_input(tmp_path: Path) -> None:
    # Long (Tornado quotes the first 40 bytes of a bad argument) and not ASCII.
    token = "tökén-€-" + secrets.token_urlsafe(30)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log_file, server_process(
        "--no-autostart-chat", "--shell", "/bin/bash --norc --noprofile",
        env={"MIXVLLM_TERMINAL_TOKEN": token}, stderr=log_file.fileno(),
    ) as (_, url):  # fmt: skip
        port = urlparse(url).port
        assert port is not None

        async def body() -> None:
            for request in _hostile_requests(token, port):
                answer = await raw_exchange(port, request)
                assert not answer.startswith(b"HTTP/1.1 5"), (request, answer)

        asyncio.run(body())
    log = log_path.read_text(errors="replace")
    assert "Invalid unicode" not in log
    assert "Traceback" not in log
    assert log.count(" GET ") >= 8, log  # the requests were logged, only without the token
    leaked = [piece for piece in _token_pieces(token) if piece in log]
    assert not leaked, f"{leaked[:3]} in the log:\n{log}"


def test_frozen_client_is_detached_and_its_session_lives_on() -> None:
    async def body() -> None:
        async with running_server(ping_interval=1.0, idle_timeout=60) as srv:
            live = await srv.connect()
            auth = f"Cookie: {srv.ctx.cookie_name}={TOKEN}\r\n"
            # Then it never answers a ping, never closes.
            head, frozen = await open_raw(srv.port, _upgrade(srv.port, auth).encode())
            assert head.startswith(b"HTTP/1.1 101")
            sessions = srv.ctx.manager.sessions
            await wait_for_async(lambda: len(sessions) == 2, what="two sessions")
            (stuck,) = [s for s in sessions.values() if s.id != live.session_id]
            await wait_for_async(lambda: stuck.client is None, 10, "the frozen client dropped")
            assert srv.ctx.manager.clients() == 1
            assert sessions[live.session_id].client is not None  # it answers the pings
            live.type("echo still'-'live\r")
            await live.expect("still-live")
            back = await srv.connect(f"session={stuck.id}")
            assert back.setup == {"session": stuck.id, "reattached": True}
            frozen.transport.abort()

    run(body)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length >= 126:
        length = int.from_bytes(await reader.readexactly(2 if length == 126 else 8), "big")
    return head[0] & 0x0F, await reader.readexactly(length)


async def _oversized_then_more(srv: Server) -> int | None:
    """A client still sending a big frame when the server closes: the close code it reads."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(_upgrade(srv.port, f"Cookie: {srv.ctx.cookie_name}={TOKEN}\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    opcode, setup = await _read_frame(reader)
    session = srv.ctx.manager.sessions[json.loads(setup)[1]["session"]]
    size = srv.ctx.config.max_message_bytes + 1
    writer.write(bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big") + b"\0\0\0\0")
    writer.write(b"x" * 65536)
    await wait_for_async(lambda: session.client is None, what="the server gave up the frame")
    try:
        writer.write(b"x" * (size - 65536))  # as a browser does: it is still sending
        await writer.drain()
        while opcode != 0x8:
            opcode, payload = await _read_frame(reader)
    except (ConnectionError, asyncio.IncompleteReadError):
        return None  # reset: the close frame was lost, a browser reports 1006
    finally:
        # Not close(): it would wait for the unsent megabytes, and leave the socket open.
        writer.transport.abort()
    return int.from_bytes(payload[:2], "big")


def test_oversized_frames_reach_every_client_as_1009() -> None:
    async def body() -> None:
        async with running_server(max_message_bytes=256 * 1024) as srv:
            codes = await asyncio.gather(*(_oversized_then_more(srv) for _ in range(10)))
            assert codes == [protocol.CLOSE_TOO_BIG] * len(codes)
            other = await srv.connect()
            other.type("echo fine\r")
            await other.expect("fine")

    run(body)


def test_nul_in_a_static_path_is_a_client_error_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        async with running_server() as srv:
            for path in ("vendor/xterm/lib/x%00.js", "vendor/%00", "static/terminal.js%00"):
                r = await srv.fetch(path, srv.auth_headers())
                assert r.code in (400, 404), path

    with caplog.at_level(logging.DEBUG):
        run(body)
    assert not any(r.exc_info for r in caplog.records), "no tracebacks"


def test_non_ascii_token_works_as_bearer_and_as_cookie() -> None:
    token = "tökén-€-secret"

    async def body() -> None:
        async with running_server(token=token) as srv:
            # curl and most clients send header bytes as UTF-8; Tornado decodes them as Latin-1.
            utf8 = token.encode().decode("latin-1")
            r = await srv.fetch("healthz", {"Authorization": f"Bearer {utf8}"})
            assert r.code == 200
            login = await srv.fetch(f"?token={quote(token)}")
            assert login.code == 302
            cookie = login.headers["Set-Cookie"].split(";")[0]
            assert cookie.isascii()
            page = await srv.fetch("healthz", {"Cookie": cookie})
            assert page.code == 200
            wrong = await srv.fetch(
                "healthz", {"Authorization": "Bearer tökén-€-secreT".encode().decode("latin-1")}
            )
            assert wrong.code == 403

    run(body)


@pytest.mark.parametrize("limit", [3000, 3001])
def test_replay_after_a_trim_starts_on_a_character_boundary(limit: int) -> None:
    async def body() -> None:
        async with running_server(scrollback_bytes=limit) as srv:
            a = await srv.connect()
            # A run of 2-byte characters longer than the scrollback: one of the two limits
            # (odd, even) puts the trim inside a character.
            a.type("printf 'é%.0s' $(seq 1 2500); echo; echo é'-'done\r")
            await a.expect("é-done")
            sid = a.session_id
            await a.close()
            await wait_for_async(lambda: srv.ctx.manager.sessions[sid].client is None)
            b = await srv.connect(f"session={sid}&binary=1")
            await b.expect("é-done")
            assert b.output.startswith("éé"), b.output[:20]

    run(body)


def test_scrollback_replay_never_starts_mid_character() -> None:
    for limit in range(1, 12):
        sb = Scrollback(limit)
        for chunk in ("a€", "é", "𝄞b", "ü€"):  # chunk edges and trims both split characters
            sb.add(chunk.encode())
            sb.replay().decode()  # strict: raises on a partial character


def test_help_and_docs_say_the_env_var_keeps_the_token_out_of_ps() -> None:
    help_text = " ".join(build_parser().format_help().split())
    assert re.search(r"--token TOKEN [^[]*MIXVLLM_TERMINAL_TOKEN[^[]*\bps\b", help_text), help_text
    docs = " ".join(section(ROOT / "docs" / "security.md", "Access token").split())
    assert re.search(r"`MIXVLLM_TERMINAL_TOKEN`[^.]*`ps`", docs), docs


def test_scrollback_of_typed_echo_costs_about_its_bytes() -> None:
    # An echo arrives a byte at a time; keeping each as its own object costs ~40x the bytes.
    typed = 200_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sb = Scrollback(1_000_000)
        for i in range(typed):
            sb.add(b"abcdefghij"[i % 10 : i % 10 + 1])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sb.replay() == b"abcdefghij" * (typed // 10)
    assert held < 2 * typed, held
