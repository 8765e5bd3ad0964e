"""Read-only share links: a real server, real PTYs and real WebSockets for owner and viewers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from tornado import httpclient, websocket

from terminal_server import protocol
from terminal_server.share_handlers import ViewSocket, cookie_name
from terminal_server.shares import MAX_VIEWERS, RESET

from .support import wait_for_async
from .terminal_support import (
    TOKEN,
    Client,
    Server,
    raw_exchange,
    run,
    running_server,
    server_process,
)

BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def share(srv: Server, session_id: str) -> str:
    """Share a session through the owner's API; return the share token."""
    r = await srv.fetch(f"api/share?session={session_id}", BEARER, method="POST", body=b"")
    assert r.code == 200, r.code
    state = json.loads(r.body)
    assert state["url"].startswith("view/?share=")
    return str(state["url"].split("=", 1)[1])


async def revoke(srv: Server, session_id: str) -> None:
    r = await srv.fetch(f"api/share?session={session_id}", BEARER, method="DELETE")
    assert r.code == 204


def view_ws(srv: Server) -> str:
    return srv.ws.removesuffix("ws") + "view/ws"


def share_cookie(srv: Server, token: str) -> dict[str, str]:
    return {"Cookie": f"{cookie_name(srv.ctx)}={token}"}


async def watch(srv: Server, token: str, query: str = "", *, auto_ack: bool = True) -> Client:
    url = view_ws(srv) + (f"?{query}" if query else "")
    conn = await websocket.websocket_connect(
        httpclient.HTTPRequest(url, headers=share_cookie(srv, token))
    )
    viewer = Client(conn, auto_ack=auto_ack)
    srv.clients.append(viewer)
    await viewer.wait_setup()
    return viewer


async def refused(srv: Server, url: str, headers: dict[str, str]) -> int:
    with pytest.raises(httpclient.HTTPClientError) as err:
        await websocket.websocket_connect(httpclient.HTTPRequest(url, headers=headers))
    return err.value.code


def shares_told(owner: Client) -> list[dict[str, Any]]:
    return [f[1] for f in owner.frames if f[0] == protocol.SHARE]


def test_viewer_sees_replay_and_live_output_and_never_takes_over() -> None:
    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            owner.type("echo before'-'share\r")
            await owner.expect("before-share")
            token = await share(srv, owner.session_id)
            viewer = await watch(srv, token)
            assert viewer.setup is not None
            assert viewer.setup["view"] is True
            assert "session" not in viewer.setup  # a viewer never learns the session's id
            await viewer.expect("before-share")  # the replay
            owner.type("echo live'-'line\r")
            await viewer.expect("live-line")
            await owner.expect("live-line")
            assert owner.close_code is None  # still the owner: not taken over
            session = srv.ctx.manager.sessions[owner.session_id]
            assert session.client is not None
            assert srv.ctx.manager.clients() == 1  # viewers are not clients
            await wait_for_async(
                lambda: shares_told(owner)[-1:] == [{"url": f"view/?share={token}", "viewers": 1}]
            )

            r = await srv.fetch(f"api/share?session={owner.session_id}", BEARER)
            assert json.loads(r.body)["viewers"] == 1
            await viewer.close()
            await wait_for_async(lambda: shares_told(owner)[-1]["viewers"] == 0, 10, "0 viewers")

    run(body)


def test_viewer_stdin_and_set_size_close_it_with_view_only(tmp_path: Path) -> None:
    marker = tmp_path / "typed-by-viewer"

    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect("rows=30&cols=90")
            token = await share(srv, owner.session_id)
            typist = await watch(srv, token)
            typist.type(f"touch {marker}\r")
            assert await typist.wait_closed() == protocol.CLOSE_VIEW_ONLY
            assert [
                protocol.ERROR,
                "view-only: this share takes no input or resize",
            ] in typist.frames

            resizer = await watch(srv, token)
            resizer.send(protocol.SET_SIZE, 5, 20)
            assert await resizer.wait_closed() == protocol.CLOSE_VIEW_ONLY

            owner.type("stty size; echo checked'-'size\r")
            await owner.expect("checked-size")
            assert "30 90" in owner.output
            assert not marker.exists()
            assert "touch" not in owner.output
            assert owner.close_code is None

    run(body)


def test_viewer_follows_the_owners_size() -> None:
    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect("rows=30&cols=90")
            viewer = await watch(srv, await share(srv, owner.session_id))
            assert viewer.setup is not None
            assert (viewer.setup["rows"], viewer.setup["cols"]) == (30, 90)
            owner.send(protocol.SET_SIZE, 40, 100)
            await wait_for_async(lambda: [protocol.SIZE, 40, 100] in viewer.frames, 10, "size")

    run(body)


def test_revoking_closes_the_viewers_and_the_token_opens_nothing_any_more() -> None:
    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            token = await share(srv, owner.session_id)
            viewers = [await watch(srv, token) for _ in range(2)]
            await revoke(srv, owner.session_id)
            for viewer in viewers:
                assert await viewer.wait_closed() == protocol.CLOSE_SHARE_ENDED
                assert [protocol.ERROR, "the owner ended this share"] in viewer.frames
            assert await refused(srv, view_ws(srv), share_cookie(srv, token)) == 403
            assert (await srv.fetch(f"view/?share={token}")).code == 403
            assert (await srv.fetch("view/", share_cookie(srv, token))).code == 403
            await wait_for_async(lambda: shares_told(owner)[-1] == {"url": None, "viewers": 0})
            assert owner.close_code is None
            # Sharing again makes a new token; the old one stays dead.
            fresh = await share(srv, owner.session_id)
            assert fresh != token
            await watch(srv, fresh)
            assert await refused(srv, view_ws(srv), share_cookie(srv, token)) == 403

    run(body)


def test_share_ends_with_its_session() -> None:
    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            token = await share(srv, owner.session_id)
            viewer = await watch(srv, token)
            owner.type("exit\r")
            assert await viewer.wait_closed() == protocol.CLOSE_SESSION_ENDED
            assert await owner.wait_closed() == protocol.CLOSE_SESSION_ENDED
            assert (await srv.fetch(f"view/?share={token}")).code == 403
            assert await refused(srv, view_ws(srv), share_cookie(srv, token)) == 403
            assert len(srv.ctx.shares) == 0

    run(body)


OWNER_ROUTES = (
    "",
    "ws",
    "healthz",
    "metrics",
    "api/status",
    "api/share?session=x",
    "static/terminal.js",
    "vendor/xterm/lib/xterm.js",
)


def test_a_share_token_opens_nothing_else() -> None:
    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            other = await srv.connect()
            token = await share(srv, owner.session_id)
            as_owner = [
                {"Authorization": f"Bearer {token}"},
                {"Cookie": f"{srv.ctx.cookie_name}={token}"},
                share_cookie(srv, token),
            ]
            for path in OWNER_ROUTES:
                for headers in as_owner:
                    assert (await srv.fetch(path, headers)).code == 403, (path, headers)
            assert (await srv.fetch(f"?token={token}")).code == 403
            assert await refused(srv, srv.ws, share_cookie(srv, token)) == 403
            assert await refused(srv, srv.ws, {"Authorization": f"Bearer {token}"}) == 403
            for method in ("POST", "DELETE"):
                body = b"" if method == "POST" else None
                r = await srv.fetch(
                    f"api/share?session={other.session_id}",
                    share_cookie(srv, token),
                    method=method,
                    body=body,
                )
                assert r.code == 403

            # The viewer's socket ignores a session id, restart and chat arguments: it shows its
            # own session and starts, ends or touches nothing else.
            sessions = set(srv.ctx.manager.sessions)
            other.type("echo other'-'session\r")
            await other.expect("other-session")
            viewer = await watch(srv, token, f"session={other.session_id}&restart=1&model=x")
            owner.type("echo owner'-'session\r")
            await viewer.expect("owner-session")
            assert "other-session" not in viewer.output
            assert set(srv.ctx.manager.sessions) == sessions
            assert other.close_code is None and owner.close_code is None

            # The view routes answer to nothing but a live share token.
            for headers in ({}, BEARER, {"Cookie": f"{srv.ctx.cookie_name}={TOKEN}"}):
                assert (await srv.fetch("view/", headers)).code == 403
                assert (await srv.fetch("view/static/terminal.js", headers)).code == 403
                assert await refused(srv, view_ws(srv), headers) == 403
            assert (await srv.fetch(f"view/?share={TOKEN}")).code == 403
            assert (await srv.fetch(f"view/?share={token}x")).code == 403

    run(body)


def test_share_link_becomes_a_lax_cookie_scoped_to_the_view() -> None:
    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            token = await share(srv, owner.session_id)
            r = await srv.fetch(f"view/?share={token}")
            assert r.code == 302
            assert r.headers["Location"] == "/view/"  # the token leaves the address bar
            cookie = r.headers["Set-Cookie"]
            assert cookie.startswith(f"{cookie_name(srv.ctx)}={token};")
            assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/view/" in cookie
            page = await srv.fetch("view/", share_cookie(srv, token))
            assert page.code == 200
            assert b'<body data-role="viewer">' in page.body
            for asset in ("view/static/terminal.js", "view/vendor/xterm/lib/xterm.js"):
                assert (await srv.fetch(asset, share_cookie(srv, token))).code == 200
            # Sharing is the owner's act: a page from another origin cannot start one.
            for origin in ("http://evil.example", f"https://127.0.0.1:{srv.port}"):
                foreign = {**BEARER, "Origin": origin}
                url = f"api/share?session={owner.session_id}"
                assert (await srv.fetch(url, foreign, method="DELETE")).code == 403, origin
            assert (await srv.fetch("api/share?session=nope-nope-nope", BEARER)).code == 404

    run(body)


def test_a_slow_viewer_never_stalls_the_owner_and_is_resynced() -> None:
    window = 64 * 1024

    async def body() -> None:
        async with running_server(flow_window=window) as srv:
            owner = await srv.connect()
            token = await share(srv, owner.session_id)
            viewer = await watch(srv, token, auto_ack=False)  # reads, but never acknowledges
            state = srv.ctx.shares.find(token)
            assert state is not None
            slow = state.viewer(next(iter(state._viewers)))
            assert slow is not None
            owner.type("head -c 3000000 /dev/zero | tr '\\0' s; echo; echo flood'-'done\r")
            await owner.expect("flood-done", 60)
            # The owner got all 3 MB while the viewer held at most two windows of it.
            assert owner.output.count("s") >= 3_000_000
            assert slow.lagging
            assert slow.held <= 2 * window
            assert viewer.close_code is None
            before = len(viewer.output)
            viewer.auto_ack = True
            viewer.ack()
            # Caught up: a reset, then the scrollback, which ends with the flood's end.
            await viewer.expect("flood-done", 30)
            assert RESET.decode() in viewer.output[before:]
            assert slow.resyncs == 1 and not slow.lagging
            owner.type("echo after'-'resync\r")
            await viewer.expect("after-resync")

    run(body)


def test_a_viewers_socket_keeps_no_record_per_frame_it_was_sent() -> None:
    # The share's Viewer counts what a viewer acknowledges; its socket must not also keep an
    # entry per frame that nothing ever removes (it grew by one per frame for as long as the
    # viewer watched).
    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            viewer = await watch(srv, await share(srv, owner.session_id))
            owner.type("head -c 300000 /dev/zero | tr '\\0' v; echo; echo flood'-'done\r")
            await viewer.expect("flood-done", 30)
            assert viewer.output.count("v") >= 300_000
            assert len(viewer.frames) > 5  # many frames went out
            (sock,) = [s for s in srv.ctx.sockets if isinstance(s, ViewSocket)]
            assert not sock._frame_sizes, len(sock._frame_sizes or ())

    run(body)


def test_viewers_per_share_are_capped() -> None:
    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            token = await share(srv, owner.session_id)
            for _ in range(MAX_VIEWERS):
                await watch(srv, token)
            extra = await watch(srv, token)
            assert await extra.wait_closed() == protocol.CLOSE_TRY_LATER

    run(body)


def test_no_log_line_contains_a_share_token(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with (
        log_path.open("w") as log_file,
        server_process(
            "--no-autostart-chat", "--shell", "/bin/bash --norc --noprofile",
            env={"MIXVLLM_TERMINAL_TOKEN": TOKEN}, stderr=log_file.fileno(),
        ) as (_, url),
    ):  # fmt: skip
        port = urlparse(url).port
        assert port is not None

        async def body() -> str:
            conn = await websocket.websocket_connect(
                httpclient.HTTPRequest(f"ws://127.0.0.1:{port}/ws", headers=BEARER)
            )
            setup = json.loads(await conn.read_message() or "[]")
            client = httpclient.AsyncHTTPClient()
            r = await client.fetch(
                f"http://127.0.0.1:{port}/api/share?session={setup[1]['session']}",
                method="POST", body=b"", headers=BEARER,
            )  # fmt: skip
            token = str(json.loads(r.body)["url"].split("=", 1)[1])
            host = f"127.0.0.1:{port}".encode()
            for target in (b"/view/" + token.encode(), b"/" + token.encode() + b"%ff"):
                await raw_exchange(
                    port, b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
                )
            conn.close()
            return token

        token = asyncio.run(body())
    log = log_path.read_text(errors="replace")
    assert "GET /view/[token]" in log, log  # the request was logged, without the token
    assert token not in log
