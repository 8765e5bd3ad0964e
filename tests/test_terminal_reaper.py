"""Ending sessions off the event loop: others keep echoing, and a full server stops at once.

Before the reaper, each ending session scanned /proc on the event loop (two scans and more
per session): 100 sessions ending together froze another session's echo for over a second,
and SIGTERM with 200 sessions took 8.5-9.8 s. The bounds below sit far from both: a loaded
two-core machine must not fail them, the old code must.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from tornado import httpclient, websocket

from .support import wait_for_async
from .terminal_support import TEST_SHELL, Client, run, running_server, server_process

ENDING = 100
ECHO_STALL_MAX_S = 0.5  # was 1.7-2.7 s; tens of ms on a loaded machine now
STOP_SESSIONS = 200
STOP_MAX_S = 2.0  # was 8.5-16 s; 0.3-0.6 s now


async def _echo_time(c: Client, ch: str) -> float:
    """Seconds from typing `ch` to its echo."""
    seen = len(c.output)
    start = time.monotonic()
    c.type(ch)
    while ch not in c.output[seen:]:  # checked every ms: wait_for_async's steps grow to 50 ms
        assert time.monotonic() - start < 10, f"no echo of {ch!r}"
        await asyncio.sleep(0.001)
    return time.monotonic() - start


@pytest.mark.slow
def test_sessions_ending_together_do_not_stall_another_sessions_echo() -> None:
    async def body() -> None:
        async with running_server(max_sessions=ENDING + 1) as srv:
            c = await srv.connect()
            assert c.conn.protocol is not None
            c.conn.protocol.set_nodelay(True)  # as browsers do: no Nagle delay on each key
            manager = srv.ctx.manager
            ending = [await manager.create() for _ in range(ENDING)]
            await wait_for_async(lambda: all(s.replay() for s in ending), 60, "every prompt")
            echoes: list[float] = []
            done = asyncio.Event()

            async def typist() -> None:
                while not done.is_set():
                    for ch in "abcdefghij":
                        echoes.append(await _echo_time(c, ch))
                    c.type("\x15")  # clear the line

            typing = asyncio.ensure_future(typist())
            await wait_for_async(lambda: len(echoes) >= 10, 10, "echoes before")
            for session in ending:
                session.write("exit\r")
            await wait_for_async(lambda: len(manager.sessions) == 1, 30, "the sessions ended")
            before = len(echoes)
            await wait_for_async(lambda: len(echoes) >= before + 10, 10, "echoes after")
            done.set()
            await typing
            assert max(echoes) < ECHO_STALL_MAX_S, sorted(echoes)[-5:]

    run(body)


@pytest.mark.slow
def test_sigterm_stops_a_server_with_200_sessions_in_under_2_s(tmp_path: Path) -> None:
    args = ("--no-autostart-chat", "--shell", " ".join(TEST_SHELL))
    log = tmp_path / "server.log"  # a pipe nobody reads while 400 lines are logged could fill
    with log.open("w") as err:
        server = server_process(*args, "--max-sessions", str(STOP_SESSIONS), stderr=err.fileno())
        with server as (proc, url):
            base, token = url.split("?token=")

            async def open_sessions() -> None:
                req = httpclient.HTTPRequest(
                    base.replace("http://", "ws://") + "ws",
                    headers={"Authorization": f"Bearer {token}"},
                )
                for _ in range(STOP_SESSIONS):  # each left running, detached, when its client goes
                    conn = await websocket.websocket_connect(req)
                    c = Client(conn, auto_ack=True)
                    c.type("echo up'-'$$\r")
                    await c.expect("up-")
                    await c.close()

            asyncio.run(open_sessions())
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            took = time.monotonic() - start
            assert took < STOP_MAX_S, f"{took:.2f} s"
    logged = log.read_text()
    assert logged.count("ended (exit") == STOP_SESSIONS
    assert "survived" not in logged and "Traceback" not in logged
