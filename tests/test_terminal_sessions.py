"""PTY sessions: escalating kill and reaping, no leaks over 200 cycles, flow control."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import struct
import sys
import termios
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from tornado import httpclient, websocket

from terminal_server import protocol, sessions, terminals
from terminal_server.processes import session_env
from terminal_server.reaper import session_members

from .support import wait_for, wait_for_async
from .terminal_support import TEST_SHELL, Client, make_config, run, running_server, server_process


def _gone(pid: int) -> bool:
    """Dead, and not left unreaped by us.

    Orphans are reparented to PID 1 (the server itself is a subreaper only when run through
    its entry point); reaping those is init's job, so a zombie there counts as gone.
    """
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE and proc.ppid() != os.getpid()
    except psutil.NoSuchProcess:
        return True


def test_close_kills_the_whole_session_including_hup_ignoring_children() -> None:
    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect()
            session = srv.ctx.manager.sessions[c.session_id]
            # A background job (its own process group under job control) that ignores HUP
            # and TERM, and a foreground-style child via nohup.
            c.type(
                "bash -c 'trap \"\" HUP TERM; echo stubborn-$$; exec sleep 300' & "
                "nohup sleep 301 >/dev/null 2>&1 & echo start'ed'\r"
            )
            await c.expect("started")
            # The echoed command line says "stubborn-$$": wait for the job's own line.
            await wait_for_async(
                lambda: re.search(r"stubborn-\d+\r?\n", c.output), 10, "stubborn-PID"
            )
            stubborn = int(re.search(r"stubborn-(\d+)", c.output).group(1))  # type: ignore[union-attr]
            await wait_for_async(
                lambda: (
                    {"sleep"}
                    <= {
                        psutil.Process(p).name()
                        for p, _, s in session_members(session.proc.pid)
                        if s != "Z"
                    }
                ),
                5,
                "children",
            )
            pids = [p for p, _, _ in session_members(session.proc.pid)]
            assert stubborn in pids
            assert len(pids) >= 3
            await session.close()
            for pid in pids:
                assert _gone(pid), f"pid {pid} survived"
            assert all(_gone(pid) for pid, _, _ in session_members(session.proc.pid))
            assert session.proc.returncode is not None
            assert await c.wait_closed() == protocol.CLOSE_SESSION_ENDED

    run(body)


def test_ctrl_c_reaches_the_foreground_program() -> None:
    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect()
            c.type("sleep 300; echo after'-'sleep\r")
            session = srv.ctx.manager.sessions[c.session_id]
            await wait_for_async(
                lambda: any(
                    psutil.Process(p).name() == "sleep"
                    for p, _, s in session_members(session.proc.pid)
                    if s != "Z"
                ),
                5,
            )
            c.type("\x03")
            c.type("echo interrupted'-'ok\r")
            await c.expect("interrupted-ok")
            assert "after-sleep" not in c.output

    run(body)


# Runs the rest of its arguments with SIGINT and SIGQUIT ignored and blocked: what a server
# started from a background job of a script (`cmd &` ignores both) or by a parent that blocks
# them inherits.
SIGINT_IGNORED_AND_BLOCKED = (
    sys.executable,
    "-c",
    "import ctypes, os, signal, sys; sigs = {signal.SIGINT, signal.SIGQUIT}; "
    "[signal.signal(s, signal.SIG_IGN) for s in sigs]; "
    "signal.pthread_sigmask(signal.SIG_BLOCK, sigs); "
    # and 32, the C library's own, which only the kernel's rt_sigaction sets (x86_64: 13)
    "ctypes.CDLL(None).syscall(13, 32, ctypes.byref((ctypes.c_ulong * 4)(1)), None, 8); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


def _signal_masks(status: str) -> dict[str, int]:
    return {k: int(v, 16) for k, v in re.findall(r"(Sig(?:Blk|Ign)):\s*([0-9a-f]+)", status)}


def test_sessions_start_with_default_signals_whatever_the_server_inherited() -> None:
    shell = " ".join(TEST_SHELL)
    args = ("--no-autostart-chat", "--shell", shell)
    with server_process(*args, prefix=SIGINT_IGNORED_AND_BLOCKED) as (proc, url):
        sigint, sigquit = (1 << (s - 1) for s in (signal.SIGINT, signal.SIGQUIT))

        def server_masks() -> dict[str, int]:
            return _signal_masks(Path(f"/proc/{proc.pid}/status").read_text())

        # The server did inherit SIGQUIT and 32 ignored, SIGQUIT blocked (it leaves those), and
        # unblocked the SIGINT it stops on (polled: a thread blocks every signal for a moment
        # around a vfork).
        assert server_masks()["SigIgn"] & sigquit and server_masks()["SigIgn"] & (1 << 31)
        wait_for(lambda: server_masks()["SigBlk"] & sigquit, 5, "SIGQUIT blocked")
        wait_for(lambda: not server_masks()["SigBlk"] & sigint, 5, "SIGINT unblocked")
        base, token = url.split("?token=")

        async def body() -> None:
            req = httpclient.HTTPRequest(
                base.replace("http://", "ws://") + "ws",
                headers={"Authorization": f"Bearer {token}"},
            )
            c = Client(await websocket.websocket_connect(req), auto_ack=True)
            try:
                await c.wait_setup()
                # A program the shell starts has what the shell was given: nothing ignored
                # or blocked.
                c.type("grep -E '^Sig(Blk|Ign)' /proc/self/status; echo listed'-'masks\r")
                await c.expect("listed-masks")
                masks = _signal_masks(c.output.split("listed'-'masks")[-1])
                assert masks == {"SigBlk": 0, "SigIgn": 0}, c.output
                c.type("sleep 300; echo after'-'sleep\r")
                await wait_for_async(
                    lambda: any(
                        p.name() == "sleep" for p in psutil.Process(proc.pid).children(True)
                    ),
                    10,
                    "sleep",
                )
                c.type("\x03")
                c.type("echo interrupted'-'ok\r")
                await c.expect("interrupted-ok")
                assert "after-sleep" not in c.output
            finally:
                await c.close()

        run(body)


def _snapshot() -> tuple[int, set[int]]:
    me = psutil.Process()
    return me.num_fds(), {p.pid for p in me.children(recursive=True)}


@pytest.mark.slow
def test_200_open_close_cycles_leak_no_processes_or_fds() -> None:
    async def body() -> None:
        async with running_server(max_sessions=4) as srv:

            async def cycle(i: int) -> None:
                c = await srv.connect()
                session = srv.ctx.manager.sessions[c.session_id]
                if i % 2:
                    await c.expect("bash")  # the prompt: bash is reading its input
                    c.type("exit\r")  # the program ends the session
                else:
                    await session.close()  # the server ends it
                try:
                    code = await c.wait_closed()
                except TimeoutError:
                    state = (session.closed, session.reading, session.proc.poll())
                    raise AssertionError(f"cycle {i}: {c.output!r} {state}") from None
                assert code == protocol.CLOSE_SESSION_ENDED
                await c.close()
                srv.clients.remove(c)

            for i in range(4):  # warm up lazily created fds (HTTP client, selectors)
                await cycle(i)
            fds, children = _snapshot()
            for i in range(200):
                await cycle(i)
            assert srv.ctx.manager.sessions == {}
            fds_after, children_after = _snapshot()
            assert children_after - children == set()
            assert fds_after <= fds, (fds, fds_after)
            assert srv.ctx.metrics.sessions_started == 204

    run(body)
    me = psutil.Process()
    zombies = [p for p in me.children() if p.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []


FLOOD = "head -c 6000000 /dev/zero | tr '\\0' a; echo; echo flood'-'done\r"


def test_stalled_client_bounds_server_buffering_and_blocks_the_program() -> None:
    window = 64 * 1024

    async def body() -> None:
        async with running_server(flow_window=window) as srv:
            c = await srv.connect(auto_ack=False)
            session = srv.ctx.manager.sessions[c.session_id]
            c.type(FLOOD)
            await wait_for_async(lambda: session.window_full, 10, "the window to fill")
            assert not session.reading
            assert session.outstanding <= window  # reads stop at the window's edge
            produced = srv.ctx.metrics.bytes_out
            # While nothing is acknowledged, nothing more is read and the producer waits:
            # observe for a while (proving an absence needs a time window).
            for _ in range(10):
                await asyncio.sleep(0.03)
                assert session.window_full
                assert not session.reading
            members = session_members(session.proc.pid)
            names = {psutil.Process(p).name() for p, _, s in members if s != "Z"}
            assert {"head", "tr"} & names, names
            assert srv.ctx.metrics.bytes_out == produced
            assert produced < 6_000_000
            assert c.close_code is None  # stalled but alive: not disconnected
            # Acknowledge and keep acknowledging: the flood finishes.
            c.auto_ack = True
            c.ack()
            await c.expect("flood-done", 60)
            assert srv.ctx.metrics.bytes_out >= 6_000_000

    run(body)


def test_stalled_client_can_still_interrupt_the_flood() -> None:
    async def body() -> None:
        async with running_server(flow_window=64 * 1024) as srv:
            c = await srv.connect(auto_ack=False)
            session = srv.ctx.manager.sessions[c.session_id]
            c.type("cat /dev/zero | tr '\\0' b\r")
            await wait_for_async(lambda: session.window_full, 10, "the window to fill")
            c.type("\x03")
            c.auto_ack = True
            c.ack()
            c.type("echo back'-'at-prompt\r")
            await c.expect("back-at-prompt", 30)

    run(body)


def test_over_acknowledging_is_a_protocol_error() -> None:
    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect(auto_ack=False)
            c.send(protocol.ACK, 10_000)
            assert await c.wait_closed() == protocol.CLOSE_INVALID

    run(body)


def test_output_is_batched_into_large_frames() -> None:
    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect()
            c.type("head -c 2000000 /dev/zero | tr '\\0' c; echo; echo batch'-'done\r")
            await c.expect("batch-done", 30)
            sizes = [len(f[1]) for f in c.frames if f[0] == protocol.STDOUT]
            assert sum(sizes) >= 2_000_000
            # 2 MB in PTY-sized (4 KiB) reads would be ~500 frames
            assert len(sizes) < 250, len(sizes)

    run(body)


def test_session_env_passes_model_settings_and_hides_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_SERVER_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("VLLM_API_KEY", "vk-123")
    monkeypatch.setenv("OPENAI_API_KEY", "ok-456")
    monkeypatch.setenv("MIXVLLM_TERMINAL_TOKEN", "secret-token-value")

    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect()
            c.type(
                'echo "u=$MODEL_SERVER_URL v=$VLLM_API_KEY o=$OPENAI_API_KEY'
                ' t=${MIXVLLM_TERMINAL_TOKEN:-none} s=$MIXVLLM_SESSION term=$TERM"\r'
            )
            await c.expect(f"s={c.session_id} term=xterm-256color")
            assert "u=http://127.0.0.1:9/v1 v=vk-123 o=ok-456 t=none" in c.output

    run(body)


def test_autostart_runs_chat_then_lands_in_the_shell(tmp_path: os.PathLike[str]) -> None:
    fake_chat = os.path.join(tmp_path, "chat")
    with open(fake_chat, "w") as f:
        f.write('#!/bin/sh\necho "chat-args:[$*]"; exit 2\n')
    os.chmod(fake_chat, 0o755)

    async def body() -> None:
        async with running_server(autostart_chat=True, chat_command=(fake_chat,)) as srv:
            c = await srv.connect("model=m1&system=be%20brief%3B%20rm%20-rf%20%2F")
            await c.expect("chat-args:[--model m1 --system be brief; rm -rf /]")
            c.type("echo in'-'shell\r")  # chat exited: the shell took over the PTY
            await c.expect("in-shell")

    run(body)


def test_binary_output_mode_carries_raw_utf8_with_the_same_flow_control() -> None:
    async def body() -> None:
        async with running_server(flow_window=64 * 1024) as srv:
            c = await srv.connect("binary=1")
            c.type("printf 'caf\\303\\251 %s\\n' bin'-'ok\r")
            await c.expect("café bin-ok")
            assert c.binary_frames > 0
            stalled = await srv.connect("binary=1", auto_ack=False)
            session = srv.ctx.manager.sessions[stalled.session_id]
            stalled.type("head -c 3000000 /dev/zero | tr '\\0' z; echo; echo bin'-'done\r")
            await wait_for_async(lambda: session.window_full, 10, "the window to fill")
            assert not session.reading
            assert session.outstanding <= 64 * 1024
            stalled.auto_ack = True
            stalled.ack()
            await stalled.expect("bin-done", 60)

    run(body)


def test_byte_acks_need_no_message_for_typing_and_keep_flow_control() -> None:
    window = 64 * 1024

    async def body() -> None:
        async with running_server(flow_window=window) as srv:
            c = await srv.connect("binary=1&ack=bytes", auto_ack=False)
            assert c.setup is not None and c.setup["ack_bytes"] == window // 4
            session = srv.ctx.manager.sessions[c.session_id]
            # Typing and its echo: no ack message at all, and the session keeps reading.
            for i in range(40):
                c.type("x")
                await c.expect("x" * (i + 1))
            assert c.binary_frames >= 40
            assert session.reading and 0 < session.outstanding < window // 4
            # A flood fills the window and stops the reads until the client acks by bytes.
            c.type("\x15head -c 3000000 /dev/zero | tr '\\0' z; echo; echo ack'-'done\r")
            await wait_for_async(lambda: session.window_full, 10, "the window to fill")
            assert not session.reading
            c.auto_ack = True
            c.ack()
            await c.expect("ack-done", 60)
            # Acks of the other mode, or for more bytes than were sent, are protocol errors.
            c.send(protocol.ACK, 1)
            assert await c.wait_closed() == protocol.CLOSE_INVALID
            over = await srv.connect("binary=1&ack=bytes", auto_ack=False)
            over.send(protocol.ACK_BYTES, 10_000_000)
            assert await over.wait_closed() == protocol.CLOSE_INVALID
            # Text frames carry decoded text, whose bytes a client cannot count: frame acks.
            text = await srv.connect("ack=bytes")
            assert text.setup is not None and "ack_bytes" not in text.setup

    run(body)


def test_sessions_find_chat_on_path_after_it_exits() -> None:
    config = make_config(chat_command=("/opt/mixvllm/venv/bin/chat", "--wait", "120"))
    env = session_env("abc", config)
    assert env["PATH"].split(os.pathsep)[0] == "/opt/mixvllm/venv/bin"
    assert env["MIXVLLM_SESSION"] == "abc"
    assert session_env("abc", make_config(chat_command=("chat",)))["PATH"] == os.environ.get(
        "PATH", os.defpath
    )


def test_a_size_change_is_confirmed_behind_the_output_drawn_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The page resizes its screen at the confirmation: output the program drew for the old
    # size, even output still waiting to be batched, must reach it first.
    # Every read is batched and waits for the resize: small reads go out at once otherwise,
    # and a loaded machine's PTY can hand the 2,000 bytes over in pieces under that size.
    monkeypatch.setattr(terminals, "COALESCE_S", 60.0)
    monkeypatch.setattr(terminals, "INTERACTIVE_MAX", 0)

    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect("binary=1&ack=bytes&sizes=1")
            assert c.setup is not None and c.setup["sizes"] is True
            session = srv.ctx.manager.sessions[c.session_id]
            c.type("printf '%02000d\\n' 7\r")
            await wait_for_async(lambda: session.outstanding >= 2000, what="output held back")
            assert "0007" not in c.output
            c.send(protocol.SET_SIZE, 31, 97)
            await wait_for_async(lambda: [protocol.SIZE, 31, 97] in c.frames, what="the answer")
            before = c.frames[: c.frames.index([protocol.SIZE, 31, 97])]
            assert any(f[0] == protocol.STDOUT and "0007" in f[1] for f in before)
            # The PTY has the new size (read from the kernel: this session's output waits).
            winsize = fcntl.ioctl(session.fd, termios.TIOCGWINSZ, b"\0" * 8)
            assert struct.unpack("HHHH", winsize)[:2] == (31, 97)
            monkeypatch.undo()  # a new session's output flows as usual
            # A client that does not ask gets no answers (terminado's protocol has none).
            plain = await srv.connect()
            assert plain.setup is not None and "sizes" not in plain.setup
            plain.send(protocol.SET_SIZE, 30, 90)
            plain.type("stty size\r")
            await plain.expect("30 90")
            assert all(f[0] != protocol.SIZE for f in plain.frames)

    run(body)


def test_a_session_starting_does_not_stall_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fork and exec took 10-30 ms on a loaded machine, every other session's echo stopped
    # meanwhile: they run in a worker thread. Here each start is made slow on purpose.
    slow_s = 0.5
    spawn = terminals.processes.spawn

    def slow_spawn(*args: Any, **kwargs: Any) -> Any:
        time.sleep(slow_s)
        return spawn(*args, **kwargs)

    monkeypatch.setattr(terminals.processes, "spawn", slow_spawn)

    async def body() -> None:
        async with running_server() as srv:
            c = await srv.connect()
            await wait_for_async(lambda: c.output, 10, "a prompt")
            echoes: list[float] = []
            opening = asyncio.ensure_future(srv.connect())
            while not opening.done():
                for ch in "abcdefghij":
                    seen, start = len(c.output), time.monotonic()
                    c.type(ch)
                    while ch not in c.output[seen:]:
                        assert time.monotonic() - start < 10, f"no echo of {ch!r}"
                        await asyncio.sleep(0.001)
                    echoes.append(time.monotonic() - start)
                c.type("\x15")
            await opening
            assert echoes
            assert max(echoes) < slow_s / 2, f"an echo waited {max(echoes):.3f} s"

    run(body)


def test_sessions_started_together_stay_within_the_cap() -> None:
    # Starts run in a thread now: one still forking must count against the cap, or six
    # tabs opened together on a cap of four would all get a session.
    async def body() -> None:
        async with running_server(max_sessions=4) as srv:
            results = await asyncio.gather(
                *(srv.ctx.manager.create() for _ in range(6)), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, sessions.SessionLimitError)]
            assert len(refused) == 2, results
            assert len(srv.ctx.manager.sessions) == 4

    run(body)
