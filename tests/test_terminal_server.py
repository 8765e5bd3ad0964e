"""The terminal server end to end: real bash PTYs behind a real WebSocket on a free port."""

from __future__ import annotations

import json
import logging

import pytest
from tornado import httpclient, websocket

from terminal_server import protocol

from .support import wait_for_async
from .terminal_support import TOKEN, run, running_server


def test_round_trip_echo() -> None:
    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect()
            c.type("echo round'trip'-ok\r")
            await c.expect("roundtrip-ok")

    run(body)


def test_resize_reaches_the_program() -> None:
    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect()
            c.send(protocol.SET_SIZE, 33, 111)
            c.type("stty size\r")
            await c.expect("33 111")

    run(body)


def test_initial_size_from_query() -> None:
    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect("rows=40&cols=132")
            c.type("stty size\r")
            await c.expect("40 132")

    run(body)


def test_reattach_replays_scrollback_and_keeps_the_shell() -> None:
    async def body() -> None:
        async with running_server() as srv:
            a = await srv.connect()
            a.type("X=kept; echo before-'reload'\r")
            await a.expect("before-reload")
            sid = a.session_id
            await a.close()
            await wait_for_async(lambda: srv.ctx.manager.sessions[sid].client is None)
            b = await srv.connect(f"session={sid}")
            assert b.setup == {"session": sid, "reattached": True}
            await b.expect("before-reload")  # replayed
            b.type("echo value=$X\r")
            await b.expect("value=kept")

    run(body)


def test_unknown_session_id_starts_a_new_session() -> None:
    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect("session=doesnotexist123")
            assert c.setup is not None
            assert c.setup["reattached"] is False
            assert c.session_id != "doesnotexist123"

    run(body)


def test_second_tab_takes_over_the_session() -> None:
    async def body() -> None:
        async with running_server() as srv:
            a = await srv.connect()
            b = await srv.connect(f"session={a.session_id}")
            assert await a.wait_closed() == protocol.CLOSE_TAKEN_OVER
            b.type("echo still'here'\r")
            await b.expect("stillhere")

    run(body)


def test_scrollback_is_bounded() -> None:
    async def body() -> None:
        async with running_server(scrollback_bytes=4096) as srv:
            a = await srv.connect()
            a.type("head -c 100000 /dev/zero | tr '\\0' x; echo; echo done'-'flood\r")
            await a.expect("done-flood")
            sid = a.session_id
            await a.close()
            b = await srv.connect(f"session={sid}")
            await b.expect("done-flood")
            assert len(b.output) <= 4096

    run(body)


def test_scrollback_replay_is_exactly_the_latest_output() -> None:
    async def body() -> None:
        async with running_server(scrollback_bytes=3000) as srv:
            a = await srv.connect()
            a.type("seq 1 5000; echo seq'-'done\r")
            await a.expect("seq-done")
            sid = a.session_id
            await a.close()
            await wait_for_async(lambda: srv.ctx.manager.sessions[sid].client is None)
            b = await srv.connect(f"session={sid}")
            await b.expect("seq-done")
            assert len(b.output.encode()) == 3000
            # The oldest kept bytes start mid-line; every whole line after them is there.
            numbers = [int(line) for line in b.output.split("\r\n")[1:] if line.isdigit()]
            assert numbers == list(range(numbers[0], 5001)), numbers
            assert len(numbers) > 400

    run(body)


def test_idle_session_is_culled() -> None:
    async def body() -> None:
        async with running_server(idle_timeout=0.3) as srv:
            a = await srv.connect()
            sid = a.session_id
            pid = srv.ctx.manager.sessions[sid].proc.pid
            a.type("echo x\r")
            await a.expect("x")
            await a.close()
            await wait_for_async(lambda: sid not in srv.ctx.manager.sessions, 10, "cull")
            b = await srv.connect(f"session={sid}")
            assert b.setup is not None
            assert b.setup["reattached"] is False
            with pytest.raises(ProcessLookupError):
                __import__("os").kill(pid, 0)

    run(body)


def test_attached_session_is_not_culled() -> None:
    async def body() -> None:
        async with running_server(idle_timeout=60) as srv:
            manager = srv.ctx.manager
            a = await srv.connect()
            gone = await srv.connect()
            attached = manager.sessions[a.session_id]
            detached = manager.sessions[gone.session_id]
            await gone.close()
            await wait_for_async(lambda: detached.client is None, 10, "the detach")
            manager.cull()
            assert not detached.closed  # detached for less than the idle timeout
            # Backdate the detach instead of sleeping through the timeout.
            assert detached.detached_at is not None
            detached.detached_at -= 61
            manager.cull()
            assert detached.closed
            assert not attached.closed
            a.type("echo still'-'here\r")
            await a.expect("still-here")

    run(body)


def test_program_exit_ends_the_session() -> None:
    async def body() -> None:
        async with running_server() as srv:
            a = await srv.connect()
            a.type("exit 3\r")
            assert await a.wait_closed() == protocol.CLOSE_SESSION_ENDED
            assert [protocol.DISCONNECT, 3] in a.frames
            assert srv.ctx.manager.sessions == {}

    run(body)


def test_healthz_and_metrics() -> None:
    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect()
            c.type("echo abc\r")
            await c.expect("abc")
            r = await srv.fetch("healthz", srv.auth_headers())
            assert r.code == 200
            health = json.loads(r.body)
            assert health["status"] == "ok"
            assert health["sessions"] == 1
            assert health["version"]
            m = await srv.fetch("metrics", {"Authorization": f"Bearer {TOKEN}"})
            assert m.code == 200
            text = m.body.decode()
            assert "mixvllm_terminal_sessions 1" in text
            bytes_in = next(
                line for line in text.splitlines() if line.startswith("mixvllm_terminal_bytes_in")
            )
            assert int(bytes_in.split()[-1]) >= len("echo abc\r")

    run(body)


def test_session_cap_refuses_with_a_clear_message() -> None:
    async def body() -> None:
        async with running_server(max_sessions=2) as srv:
            await srv.connect()
            await srv.connect()
            third = await srv.connect()
            assert await third.wait_closed() == protocol.CLOSE_TRY_LATER
            assert third.frames[0][0] == protocol.ERROR
            assert "session limit reached (2)" in third.frames[0][1]
            assert len(srv.ctx.manager.sessions) == 2
            assert srv.ctx.metrics.rejected["session_limit"] == 1

    run(body)


def test_base_path_prefixes_every_route() -> None:
    async def body() -> None:
        async with running_server(base_path="/term/") as srv:
            r = await srv.fetch("", srv.auth_headers())
            assert r.code == 200
            assert b"static/terminal.js" in r.body
            js = await srv.fetch("vendor/xterm/lib/xterm.js", srv.auth_headers())
            assert js.code == 200
            bare = await srv.fetch("/term", srv.auth_headers())
            assert bare.code in (301, 302)
            c = await srv.connect()
            c.type("echo under'-'prefix\r")
            await c.expect("under-prefix")

    run(body)


def test_static_assets_are_served_and_nothing_else() -> None:
    async def body() -> None:
        async with running_server() as srv:
            for path in (
                "static/terminal.js",
                "static/terminal.css",
                "vendor/xterm/css/xterm.css",
                "vendor/addon-fit/lib/addon-fit.js",
                "vendor/addon-web-links/lib/addon-web-links.js",
            ):
                r = await srv.fetch(path, srv.auth_headers())
                assert r.code == 200, path
            for path in ("static/package.json", "vendor/../../package-lock.json"):
                r = await srv.fetch(path, srv.auth_headers())
                assert r.code in (403, 404), path

    run(body)


def test_one_session_failing_does_not_hurt_another(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with running_server() as srv:
            good = await srv.connect()
            bad = await srv.connect()
            bad.send_raw("{not json")
            assert await bad.wait_closed() == protocol.CLOSE_INVALID
            good.type("echo unaffected\r")
            await good.expect("unaffected")

    with caplog.at_level(logging.WARNING, "mixvllm.terminal"):
        run(body)


def test_websocket_connect_helper_raises_on_refusal() -> None:
    async def body() -> None:
        async with running_server() as srv:
            with pytest.raises(httpclient.HTTPClientError) as err:
                await websocket.websocket_connect(srv.ws)
            assert err.value.code == 403

    run(body)


def test_restart_ends_the_session_and_starts_a_fresh_one() -> None:
    async def body() -> None:
        async with running_server() as srv:
            a = await srv.connect()
            a.type("X=old; echo set'-'old\r")
            await a.expect("set-old")
            old = srv.ctx.manager.sessions[a.session_id]
            b = await srv.connect(f"session={a.session_id}&restart=1")
            assert b.setup is not None
            assert b.setup["reattached"] is False
            assert b.session_id != a.session_id
            assert old.closed
            assert old.proc.returncode is not None
            assert await a.wait_closed() == protocol.CLOSE_SESSION_ENDED
            b.type("echo X=${X:-unset}\r")
            await b.expect("X=unset")
            assert list(srv.ctx.manager.sessions) == [b.session_id]

    run(body)
