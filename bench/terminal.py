"""Benchmark: mixvllm-terminal against plain terminado and wetty, in the same run.

Every server runs as a subprocess on a free port with the same shell (bash --norc):
  terminado  terminado's TermSocket + UniqueTermManager, nothing else (Python, Tornado)
  wetty      wetty 3.2 (Node, node-pty, socket.io), installed into bench/wetty by `make bench`;
             skipped when bench/wetty/node_modules is missing. It buffers output for 2 ms
             before sending and has byte-counted flow control (a commit every 256 Ki chars).
  before     with --before DIR: the mixvllm server from another checkout (say `git archive`
             of main), so a change is measured against the old code in the same run.
A Python client drives each over its own protocol: for mixvllm it acknowledges output the
way the page does (bytes, once a threshold is consumed; per frame for an old server), for
wetty it speaks socket.io (Engine.IO 4 over a WebSocket) and commits as wetty's page does.

Measured, with ratios mixvllm / each peer:
  throughput       MB/s of `yes` output through the PTY and socket; server CPU s per MB
  PTY floor        the same output read from a PTY by a bare loop (non-blocking reads until
                   EAGAIN, as the server does) that throws it away: no socket, no client. No
                   server can read faster or for less CPU than this on the same machine; its
                   rows put it in the mixvllm column and compare it with terminado.
  echo             keystroke -> echoed character, p50/p99, and server CPU per keystroke
  keystroke floor  the same keystrokes through a bare relay (epoll, socket <-> PTY, raw bytes)
                   that does only the six system calls a keystroke takes: its kernel time is
                   the CPU no server, in C or Python, can go below
  ctrl-c           Ctrl-C during an output flood until the prompt answers, with a fast client
                   and with one consuming 1 MB/s
  stall            server RSS growth while a client stops reading for 20 s during a flood
  200 sessions     server RSS per session; one key each in turn (echo p99, server CPU share
                   of that loop's wall time, which depends on how fast this client is); then all
                   typing 10 keys/s at once for --typing seconds (server cores, echo p99)
  closed loop      200 sessions, each a person: type a key, wait for its echo, think 50-150 ms,
                   all at once for --closed s (echo p50/p99, server cores, CPU per key); then
                   the same while new sessions open one after another (echo p99, open p50).
                   The keystroke floor relay serves the same 200 connections in the same run
  while 100 sessions end
                   one session types a key every 10 ms while 100 others `exit` at once: its
                   worst and median echo (cleaning up a session must not stall the others)
  stop             SIGTERM to exit with 200 sessions open and their clients attached

Targets (issue 2, 2 cores): throughput >= 3x terminado at <= 1/4 of its CPU per MB; echo p50
no worse; ctrl-c with the 1 MB/s client <= 0.5 s; stall growth <= 8 MB; 200 sessions with
echo p99 <= 25 ms. Issue 13 (against ttyd's 0.27 / 0.46 ms, 0.08 cores, 14 KB measured
elsewhere): echo p50 <= 0.35 ms, p99 <= 0.7 ms; 200 typing sessions at <= 16 % of a core
(the typing row: 2,000 keys/s in all, a rate that does not depend on this client's speed);
<= 20 KB RSS per session; throughput and CPU per MB no worse than before. Issue 19: echo while
100 sessions end far below 1 s (it was 1.7 s), stop with 200 sessions < 2 s (it was 8.5-9.8 s).
Issue 23 (closed loop, 200 sessions): echo p99 <= terminado's in the same run (< 10 ms on a
quiet machine), server CPU per key <= 1.5x the floor relay's. --probe DIR runs the mixvllm
servers under bench/loop_probe.py (GC pauses, event-loop lag, slow callbacks) for diagnosis.
  team             with --team USER: the same server in team mode (--auth proxy), every request
                   naming USER as a proxy on loopback would; as root its sessions run as USER
Run: .venv/bin/python bench/terminal.py [--quick] [--before DIR] [--team USER] [--only echo ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from terminado import TermSocket, UniqueTermManager
from tornado import httpclient, httpserver, netutil, web, websocket

ROOT = Path(__file__).resolve().parent.parent
SHELL = "/bin/bash --norc --noprofile"
TOKEN = "bench-token-0123456789"
LINE = "0123456789abcdefghijklmnopqrstuvwxyz-0123456789abcdefghijklmnopqrstuvwxyz"
CAP_S = 30.0  # give up waiting after this long and report ">= CAP_S"
PROBE_ENV = "BENCH_LOOP_PROBE"  # --probe's folder: mixvllm servers run under loop_probe.py
TYPING_RATE = 10.0  # keys/s per session in the typing run: a fast typist


# -- the baseline server ---------------------------------------------------------------------
def run_baseline() -> None:
    async def serve() -> None:
        manager = UniqueTermManager(shell_command=SHELL.split())
        app = web.Application(
            [(r"/websocket", TermSocket, {"term_manager": manager})],
            websocket_max_message_size=1024 * 1024,
        )
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        httpserver.HTTPServer(app).add_sockets(sockets)
        print(f"PORT {sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await manager.shutdown()

    asyncio.run(serve())


# -- the floor: reading the PTY and nothing else -------------------------------------------
def run_pty_floor(megabytes: int) -> None:
    master, slave = os.openpty()
    buf = memoryview(bytearray(256 * 1024))
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f"yes {LINE} | head -c {megabytes * 1_000_000}"],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    os.set_blocking(master, False)
    poller = select.epoll()
    poller.register(master, select.EPOLLIN)
    done = False
    while not done:
        poller.poll()
        while True:
            try:
                if not os.readv(master, [buf]):
                    done = True
                    break
            except BlockingIOError:
                break
            except OSError:  # EIO: the writer is gone and everything is read
                done = True
                break
    wall, after = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_SELF)
    proc.wait()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(json.dumps({"wall": wall, "cpu": cpu}))


async def pty_floor(megabytes: int) -> tuple[float, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--pty-floor", str(megabytes), stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    result = json.loads(out)
    return megabytes / result["wall"], result["cpu"] / megabytes


# -- the floor of a keystroke: a bare relay between a socket and a PTY ------------------------
def run_echo_floor() -> None:
    """Relay raw bytes between TCP connections and a shell's PTY each, with epoll: per
    keystroke the six system calls every terminal server makes (two waits, socket read, PTY
    write, PTY read, socket send) and nothing else. Its kernel time is what no server, in C
    or Python, can go below; it prints its port, then relays until every client hung up."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    conns: dict[int, tuple[socket.socket, int, subprocess.Popen[bytes]]] = {}  # by both fds
    buf = bytearray(64 * 1024)

    def drop(fd: int) -> None:
        conn, master, shell = conns.pop(fd)
        conns.pop(master if fd == conn.fileno() else conn.fileno(), None)
        poller.unregister(conn.fileno())
        poller.unregister(master)
        conn.close()
        os.close(master)
        shell.kill()
        shell.wait()

    served = False
    while conns or not served:
        for fd, _ in poller.poll():
            if fd == listener.fileno():
                conn, _ = listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                master, slave = os.openpty()
                shell = subprocess.Popen(
                    SHELL.split(), stdin=slave, stdout=slave, stderr=slave, start_new_session=True
                )
                os.close(slave)
                os.set_blocking(master, False)
                conns[conn.fileno()] = conns[master] = (conn, master, shell)
                poller.register(conn.fileno(), select.EPOLLIN)
                poller.register(master, select.EPOLLIN)
                served = True
                continue
            if fd not in conns:
                continue
            conn, master, _ = conns[fd]
            try:
                if fd == master:
                    conn.sendall(buf[: os.readv(master, [buf])])
                elif (n := conn.recv_into(buf)) == 0:
                    drop(fd)
                else:
                    os.write(master, buf[:n])
            except OSError:  # the client hung up hard, or the shell exited
                drop(fd)


async def echo_floor(count: int) -> tuple[float, float, float]:
    """(CPU s per keystroke, of which kernel, echo p50 s) of the bare relay."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--echo-floor"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        seen = b""

        async def until(marker: bytes) -> None:
            nonlocal seen
            while marker not in seen:
                seen = (seen + await asyncio.wait_for(reader.read(65536), CAP_S))[-4096:]
            seen = b""

        writer.write(b"PS1='$ '; stty -echoctl; echo READY-$((40+2))\r")
        await until(b"READY-42")
        relay = psutil.Process(proc.pid)
        t0, samples = relay.cpu_times(), []
        for i in range(count):
            ch = "abcdefghij"[i % 10].encode()
            start = time.monotonic()
            writer.write(ch)
            await until(ch)
            samples.append(time.monotonic() - start)
            if i % 50 == 49:
                writer.write(b"\x15")
                await reader.read(65536)
        t1 = relay.cpu_times()
        writer.close()
        await writer.wait_closed()  # the relay exits when it reads the end
        keys = count + count // 50
        cpu = (t1.user - t0.user + t1.system - t0.system) / keys
        return cpu, (t1.system - t0.system) / keys, pct(samples, 0.5)
    finally:
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


# -- servers and clients ------------------------------------------------------------------------
WETTY_DIR = ROOT / "bench" / "wetty"
WETTY_MAIN = WETTY_DIR / "node_modules" / "wetty" / "build" / "main.js"
WETTY_COMMIT = 262144  # wetty's page commits every 256 Ki characters it has written


@dataclass
class Target:
    name: str
    proc: subprocess.Popen[str]
    ws_url: str
    kind: str  # "mixvllm", "terminado" or "wetty": which protocol its client speaks
    root: Path = ROOT
    headers: dict[str, str] = field(default_factory=dict)  # what a proxy in front would add

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss


def start_mixvllm(root: Path = ROOT, name: str = "mixvllm", team_user: str | None = None) -> Target:
    """With `team_user`: team mode (--auth proxy), each request naming that user as a proxy
    on loopback would (as root, sessions run as that account: it must have uid >= 1000)."""
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])  # root's code first
    # The closed loop's side task opens a session every ~0.1 s and leaves it to the idle cull:
    # 200 typing plus those must stay under the caps, or the opens are refused.
    cap = "1000"
    team = ["--auth", "proxy", "--max-user-sessions", cap] if team_user else []
    entry = ["-m", "terminal_server"]
    if probe := os.environ.get(PROBE_ENV):  # diagnosis: the loop's stalls and GC pauses
        entry = [str(ROOT / "bench" / "loop_probe.py"), str(Path(probe) / f"{name}.json")]
    proc = subprocess.Popen(
        [sys.executable, *entry, "--port", "0", "--no-autostart-chat",
         "--shell", SHELL, "--max-sessions", cap, *team],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": path, "MIXVLLM_TERMINAL_TOKEN": TOKEN},
    )  # fmt: skip
    assert proc.stdout is not None
    m = re.search(r"open (http://\S+)", proc.stdout.readline())
    assert m, f"{name} did not start"
    # As the page asks: stdout as raw binary frames, acks by bytes where the server offers them
    url = m.group(1).replace("http://", "ws://") + "ws?binary=1&ack=bytes"
    headers = {"X-Forwarded-User": team_user} if team_user else {}
    return Target(name, proc, url, "mixvllm", root, headers)


def start_terminado() -> Target:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--baseline-server"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    port = int(proc.stdout.readline().split()[1])
    return Target("terminado", proc, f"ws://127.0.0.1:{port}/websocket", "terminado")


def start_wetty() -> Target:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # wetty runs the command itself only for root on localhost (otherwise it ssh-es there):
    # the preload makes it believe it is root; the shell still runs as this user.
    proc = subprocess.Popen(
        ["node", "--require", str(WETTY_DIR / "as_root.cjs"), str(WETTY_MAIN),
         "--host", "127.0.0.1", "--port", str(port), "--base", "/wetty",
         "--command", SHELL, "--log-level", "error"],
        cwd=WETTY_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            break
        assert time.monotonic() < deadline and proc.poll() is None, "wetty did not start"
        time.sleep(0.1)
    url = f"ws://127.0.0.1:{port}/wetty/socket.io/?EIO=4&transport=websocket"
    return Target("wetty", proc, url, "wetty")


def stop(target: Target) -> None:
    target.proc.send_signal(signal.SIGTERM)
    try:
        target.proc.wait(15)
    except subprocess.TimeoutExpired:
        target.proc.kill()
        target.proc.wait()
    if target.proc.stdout:
        target.proc.stdout.close()


@dataclass
class Conn:
    ws: websocket.WebSocketClientConnection
    kind: str
    tail: str = ""
    received: int = 0
    unacked: int = 0  # frames (mixvllm per-frame acks) or bytes (mixvllm byte acks, wetty)
    ack_every: int = 0  # > 0: acknowledge by bytes once this many are consumed
    queue: asyncio.Queue[str | None] | None = None  # wetty: events from the pump task
    pump: asyncio.Task[None] | None = None

    async def _next(self, timeout: float) -> str | bytes | None:
        if self.queue is not None:
            return await asyncio.wait_for(self.queue.get(), timeout)
        return await asyncio.wait_for(self.ws.read_message(), timeout)

    async def frame(self, timeout: float = CAP_S) -> str | None:
        """Next stdout text (acknowledged by the caller via ack())."""
        while True:
            raw = await self._next(timeout)
            if raw is None:
                return None
            if isinstance(raw, bytes):  # binary stdout frame
                text = raw.decode("utf-8", "replace")
                self.unacked += len(raw) if self.ack_every else 1
                self.received += len(raw)
                self.tail = (self.tail + text)[-4096:]
                return text
            msg = json.loads(raw)
            if msg[0] == "setup":
                self.ack_every = int(msg[1].get("ack_bytes", 0))
            elif msg[0] in ("stdout", "data"):
                self.unacked += len(msg[1]) if self.kind == "wetty" else 1
                self.received += len(msg[1])
                self.tail = (self.tail + msg[1])[-4096:]
                return str(msg[1])

    def ack(self) -> None:
        if self.kind == "wetty":
            while self.unacked >= WETTY_COMMIT:
                self.unacked -= WETTY_COMMIT
                self.ws.write_message(f'42["commit",{WETTY_COMMIT}]')
            return
        if self.kind != "mixvllm" or not self.unacked:
            return
        if not self.ack_every:
            self.ws.write_message(json.dumps(["ack", self.unacked]))
        elif self.unacked >= self.ack_every:
            self.ws.write_message(json.dumps(["ack_bytes", self.unacked]))
        else:
            return
        self.unacked = 0

    def send(self, text: str) -> None:
        if self.kind == "wetty":
            self.ws.write_message("42" + json.dumps(["input", text]))
        else:
            self.ws.write_message(json.dumps(["stdin", text]))

    async def until(self, marker: str, rate: float | None = None, timeout: float = CAP_S) -> bool:
        """Consume (at `rate` bytes/s if given) until `marker` shows up; False on timeout."""
        deadline = time.monotonic() + timeout
        while marker not in self.tail:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                text = await self.frame(left)
            except TimeoutError:
                return False
            if text is None:
                return False
            if rate:
                await asyncio.sleep(len(text.encode()) / rate)
            self.ack()
        return True


async def socketio_pump(ws: websocket.WebSocketClientConnection, queue: asyncio.Queue[Any]) -> None:
    """Engine.IO 4 for wetty: answer pings at once (an idle session would be dropped after
    7 s) and queue the events; "42[...]" is a socket.io event on the default namespace."""
    while True:
        raw = await ws.read_message()
        if raw is None:
            await queue.put(None)
            return
        if raw == "2":
            ws.write_message("3")
        elif isinstance(raw, str) and raw.startswith("42"):
            await queue.put(raw[2:])


@contextlib.asynccontextmanager
async def connect(target: Target) -> AsyncIterator[Conn]:
    req = httpclient.HTTPRequest(
        target.ws_url,
        headers={"Authorization": f"Bearer {TOKEN}", **target.headers},
        request_timeout=60,
    )
    ws = await websocket.websocket_connect(req)
    ws.protocol.set_nodelay(True)  # as browsers do
    conn = Conn(ws, target.kind)
    if target.kind == "wetty":
        opened = await ws.read_message()
        assert isinstance(opened, str) and opened.startswith("0"), opened
        ws.write_message("40")  # join the default namespace: wetty spawns the shell
        conn.queue = asyncio.Queue()
        conn.pump = asyncio.ensure_future(socketio_pump(ws, conn.queue))
        # Input sent before "login" is dropped: wetty listens for it once the shell runs.
        while await asyncio.wait_for(conn.queue.get(), CAP_S) != '["login"]':
            pass
    try:
        conn.send("PS1='$ '; stty -echoctl; echo READY-$((40+2))\r")
        assert await conn.until("READY-42"), "shell did not start"
        yield conn
    finally:
        ws.close()
        if conn.pump is not None:
            conn.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.pump


def median_of(values: list[Any]) -> Any:
    if isinstance(values[0], tuple):
        return tuple(statistics.median(column) for column in zip(*values, strict=True))
    return statistics.median(values)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- measurements --------------------------------------------------------------------------------
async def throughput(target: Target, megabytes: int) -> tuple[float, float]:
    async with connect(target) as c:
        n = megabytes * 1_000_000
        cpu0, t0 = target.cpu(), time.monotonic()
        c.send(f"yes {LINE} | head -c {n}; echo END-$((6*7))\r")
        ok = await c.until("END-42", timeout=120)
        wall, cpu = time.monotonic() - t0, target.cpu() - cpu0
        assert ok, f"{target.name}: flood did not finish"
        return megabytes / wall, cpu / megabytes


async def echo_latencies(c: Conn, count: int) -> list[float]:
    samples = []
    for i in range(count):
        ch = "abcdefghij"[i % 10]
        t0 = time.monotonic()
        c.send(ch)
        while True:
            text = await c.frame()
            c.ack()
            if text is not None and ch in text:
                break
        samples.append(time.monotonic() - t0)
        if i % 50 == 49:
            c.send("\x15")  # clear the line
            await c.frame()
            c.ack()
    c.send("\x15")
    return samples


def keys_typed(count: int) -> int:
    """Keystrokes echo_latencies sends for `count` samples (a Ctrl-U every 50, one at the end)."""
    return count + count // 50 + 1


async def echo(target: Target, count: int) -> tuple[float, float, float]:
    """(p50, p99, server CPU s per keystroke)."""
    async with connect(target) as c:
        cpu0 = target.cpu()
        s = await echo_latencies(c, count)
        return pct(s, 0.5), pct(s, 0.99), (target.cpu() - cpu0) / keys_typed(count)


async def ctrl_c(target: Target, rate: float | None) -> float:
    async with connect(target) as c:
        c.send(f"yes {LINE}\r")
        warm = time.monotonic() + 2.0
        while time.monotonic() < warm:  # let the flood fill every buffer on the way
            text = await c.frame()
            if rate and text:
                await asyncio.sleep(len(text.encode()) / rate)
            c.ack()
        t0 = time.monotonic()
        c.send("\x03")
        c.send("echo CC-$((2+3))\r")
        ok = await c.until("CC-5", rate=rate, timeout=CAP_S)
        return time.monotonic() - t0 if ok else float("inf")


async def stall(target: Target, seconds: float) -> float:
    async with connect(target) as c:
        c.send(f"yes {LINE}\r")
        for _ in range(20):
            await c.frame()
            c.ack()
        rss0 = peak = target.rss()
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # read nothing, ack nothing
            await asyncio.sleep(0.25)
            peak = max(peak, target.rss())
        c.send("\x03")
        return (peak - rss0) / 1e6


async def typist(c: Conn, interval: float, start: float, end: float, out: list[float]) -> int:
    """Type one key every `interval` s from `start` to `end`, each waited for; keys sent."""
    sent, due = 0, start
    while due < end:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        ch = "abcdefghij"[sent % 10]
        t0 = time.monotonic()
        c.send(ch)
        while ch not in (await c.frame() or ch):
            c.ack()
        c.ack()
        out.append(time.monotonic() - t0)
        sent += 1
        if sent % 50 == 0:
            c.send("\x15")  # clear the line, as echo_latencies does
        due += interval
    return sent + sent // 50


async def many_sessions(
    target: Target, n: int, rate: float, seconds: float
) -> tuple[float, float, float, float, float]:
    """(RSS per session, echo p99 and server CPU share of a sequential round over the sessions,
    then server cores and echo p99 with every session typing `rate` keys/s for `seconds`)."""
    rss0 = target.rss()
    stack = contextlib.AsyncExitStack()
    async with stack:
        conns = []
        for _ in range(n):
            conns.append(await stack.enter_async_context(connect(target)))
        per_session = (target.rss() - rss0) / n / 1e6
        cpu0, t0 = target.cpu(), time.monotonic()
        samples: list[float] = []
        for _ in range(3):
            for c in conns:
                samples += await echo_latencies(c, 1)
        share = (target.cpu() - cpu0) / (time.monotonic() - t0)
        # As people type: every session at `rate`, their keys spread evenly over time.
        interval, paced = 1.0 / rate, []
        begin = time.monotonic() + 0.5
        end = begin + seconds
        cpu0 = target.cpu()
        await asyncio.gather(
            *(
                typist(c, interval, begin + i * interval / n, end, paced)
                for i, c in enumerate(conns)
            )
        )
        cores = (target.cpu() - cpu0) / (time.monotonic() - begin)
        return per_session, pct(samples, 0.99), share, cores, pct(paced, 0.99)


async def sessions_ending(target: Target, n: int) -> tuple[float, float]:
    """(worst and median echo s of one session typing while `n` others end at once)."""
    async with contextlib.AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(connect(target))
        conns = [await stack.enter_async_context(connect(target)) for _ in range(n)]
        samples: list[float] = []
        ended = asyncio.Event()

        async def type_until_ended() -> None:
            while not ended.is_set():
                samples.extend(await echo_latencies(watcher, 1))
                await asyncio.sleep(0.01)

        async def end(c: Conn) -> None:
            c.send("exit\r")
            with contextlib.suppress(TimeoutError):
                while await c.frame(10) is not None:
                    c.ack()

        typing = asyncio.ensure_future(type_until_ended())
        await asyncio.sleep(0.3)  # the good case first
        await asyncio.gather(*(end(c) for c in conns))
        await asyncio.sleep(0.3)
        ended.set()
        await typing
        return max(samples), pct(samples, 0.5)


async def stop_time(target: Target, n: int) -> float:
    """Seconds from SIGTERM to the server's exit with `n` sessions open (clients attached)."""
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(connect(target)) for _ in range(n)]

        async def read(c: Conn) -> None:  # as a page does: a client not reading holds its
            with contextlib.suppress(TimeoutError):  # close frame back, and the server waits
                while await c.frame() is not None:
                    c.ack()

        readers = [asyncio.ensure_future(read(c)) for c in conns]
        t0 = time.monotonic()
        target.proc.send_signal(signal.SIGTERM)
        while target.proc.poll() is None:
            await asyncio.sleep(0.005)
        took = time.monotonic() - t0
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        return took


# -- closed loop: people typing, each waiting for the echo and thinking ----------------------
THINK_S = (0.05, 0.15)  # a person's pause between keys, uniform


class RawConn:
    """A client of the keystroke floor relay, with the calls of Conn the closed loop uses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, text: str) -> None:
        self.writer.write(text.encode())

    async def frame(self, timeout: float = CAP_S) -> str | None:
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        return data.decode("utf-8", "replace") if data else None

    def ack(self) -> None:
        pass


async def raw_connect(port: int) -> RawConn:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c, seen = RawConn(reader, writer), ""
    c.send("PS1='$ '; stty -echoctl; echo READY-$((40+2))\r")
    while "READY-42" not in seen:
        seen = (seen + (await c.frame() or "READY-42"))[-4096:]
    return c


async def closed_loop(
    conns: list[Any], seconds: float, cpu: Any, side: Any = None
) -> tuple[list[float], float, float]:
    """Every connection types a key, waits for its echo, thinks THINK_S, for `seconds`, all at
    once; `side` (a coroutine function) runs beside them. (echo samples, server cores, server
    CPU s per key), the CPU read by `cpu()`."""
    rng = random.Random(23)
    samples: list[float] = []
    begin = time.monotonic() + 0.2
    end = begin + seconds
    keys = 0

    async def person(c: Any, start: float) -> None:
        nonlocal keys
        await asyncio.sleep(start - time.monotonic())
        typed = 0
        while time.monotonic() < end:
            ch = "abcdefghij"[typed % 10]
            t0 = time.monotonic()
            c.send(ch)
            while ch not in (await c.frame() or ch):
                c.ack()
            c.ack()
            samples.append(time.monotonic() - t0)
            typed += 1
            if typed % 50 == 0:
                c.send("\x15")  # clear the line (its erase output has no letters)
                keys += 1
            keys += 1
            await asyncio.sleep(rng.uniform(*THINK_S))

    async def beside() -> None:
        await asyncio.sleep(begin - time.monotonic())
        while side is not None and time.monotonic() < end:
            await side()

    await asyncio.sleep(0.2)
    cpu0 = cpu()
    people = [person(c, begin + rng.uniform(0, THINK_S[1])) for c in conns]
    await asyncio.gather(*people, beside())
    used = cpu() - cpu0
    return samples, used / (time.monotonic() - begin), used / max(1, keys)


async def closed_loop_server(
    target: Target, n: int, seconds: float
) -> tuple[float, float, float, float, float, float]:
    """(echo p50, p99, server cores, CPU s per key) of `n` people typing in a closed loop;
    then (echo p99, session open p50) of the same while new sessions open one after another."""
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(connect(target)) for _ in range(n)]
        s, cores, per_key = await closed_loop(conns, seconds, target.cpu)
        opened: list[float] = []

        async def open_one() -> None:
            t0 = time.monotonic()
            async with connect(target) as conn:
                opened.append(time.monotonic() - t0)
                # The shell ends, as a tab's does when its person closes it: mixvllm keeps a
                # session whose page left for a reconnect (terminado ends it), so without this
                # the opens pile up past the server's cap over the repeats.
                conn.send("exit\r")

        s2, _, _ = await closed_loop(conns, seconds, target.cpu, open_one)
        return pct(s, 0.5), pct(s, 0.99), cores, per_key, pct(s2, 0.99), pct(opened, 0.5)


async def closed_loop_floor(n: int, seconds: float) -> tuple[float, float, float, float]:
    """(echo p50, p99, cores, CPU s per key) of the bare relay under the same closed loop."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--echo-floor"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        conns = [await raw_connect(port) for _ in range(n)]
        relay = psutil.Process(proc.pid)

        def cpu() -> float:
            t = relay.cpu_times()
            return t.user + t.system

        s, cores, per_key = await closed_loop(conns, seconds, cpu)
        for c in conns:
            c.writer.close()
        await asyncio.gather(*(c.writer.wait_closed() for c in conns))  # the relay then exits
        return pct(s, 0.5), pct(s, 0.99), cores, per_key
    finally:
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()


# -- report ---------------------------------------------------------------------------------
def fmt(v: float, unit: str) -> str:
    return f">= {CAP_S:.0f} s" if v == float("inf") else f"{v:.3f} {unit}".rstrip()


def ratio(a: float, b: float) -> str:
    if a == float("inf") or b == float("inf"):
        return "n/a (capped)" if a == b else ("0.00x" if b == float("inf") else "inf")
    return f"{a / b:.2f}x" if b else "n/a"


def start_targets(args: argparse.Namespace) -> list[Target]:
    starters = [start_mixvllm]
    if args.before:
        starters.append(lambda: start_mixvllm(Path(args.before).resolve(), "before"))
    if args.team:
        starters.append(lambda: start_mixvllm(ROOT, "team", args.team))
    starters.append(start_terminado)
    if WETTY_MAIN.exists():
        starters.append(start_wetty)
    targets: list[Target] = []
    try:
        for start in starters:
            targets.append(start())
    except BaseException:
        for t in targets:  # one that failed to start must not leave the others running
            stop(t)
        raise
    return targets


def cells(label: str, unit: str, value: Any) -> list[tuple[str, str, float]]:
    """One report row per figure of a measure: (row label, formatted value, raw value)."""
    if label.startswith("throughput"):
        return [
            ("throughput (MB/s)", f"{value[0]:.1f}", value[0]),
            ("server CPU s per MB", f"{value[1]:.4f}", value[1]),
        ]
    if label.startswith("echo"):
        return [
            ("echo p50 (ms)", f"{value[0] * 1e3:.2f}", value[0]),
            ("echo p99 (ms)", f"{value[1] * 1e3:.2f}", value[1]),
            ("server CPU per keystroke (µs)", f"{value[2] * 1e6:.0f}", value[2]),
        ]
    if label.startswith("closed loop"):
        opening = f"{label}, new sessions opening"
        return [
            (f"{label}: echo p50 (ms)", f"{value[0] * 1e3:.2f}", value[0]),
            (f"{label}: echo p99 (ms)", f"{value[1] * 1e3:.2f}", value[1]),
            (f"{label}: server cores", f"{value[2]:.3f}", value[2]),
            (f"{label}: server CPU per key (µs)", f"{value[3] * 1e6:.0f}", value[3]),
            (f"{opening}: echo p99 (ms)", f"{value[4] * 1e3:.2f}", value[4]),
            (f"{opening}: open p50 (ms)", f"{value[5] * 1e3:.1f}", value[5]),
        ]
    if label.endswith("sessions"):
        typing = f"{label} typing {TYPING_RATE:g} keys/s"
        return [
            (f"{label}: RSS/session KB", f"{value[0] * 1e3:.1f}", value[0]),
            (f"{label}, one key each in turn: echo p99 ms", f"{value[1] * 1e3:.2f}", value[1]),
            (f"{label}, one key each in turn: server CPU", f"{value[2]:.0%}", value[2]),
            (f"{typing}: server CPU", f"{value[3]:.0%}", value[3]),
            (f"{typing}: echo p99 ms", f"{value[4] * 1e3:.2f}", value[4]),
        ]
    if label.startswith("while"):
        return [
            (f"{label}: worst (ms)", f"{value[0] * 1e3:.1f}", value[0]),
            (f"{label}: median (ms)", f"{value[1] * 1e3:.1f}", value[1]),
        ]
    return [(label, fmt(value, unit), value)]


async def run_all(args: argparse.Namespace) -> int:
    load0 = os.getloadavg()
    targets = start_targets(args)
    names = [t.name for t in targets]
    if "wetty" not in names:
        print(
            f"(wetty skipped: {WETTY_MAIN} is missing; `make bench` installs it)", file=sys.stderr
        )
    rows: list[tuple[str, str, dict[str, Any]]] = []
    floor: list[tuple[float, float]] = []
    key_floor: list[tuple[float, float, float]] = []
    loop_floor: list[tuple[float, float, float, float]] = []
    try:
        for label, unit, fn in [
            ("throughput MB/s", "MB/s", lambda t: throughput(t, args.megabytes)),
            ("echo p50 / p99", "ms", lambda t: echo(t, args.keys)),
            ("ctrl-c, fast client", "s", lambda t: ctrl_c(t, None)),
            ("ctrl-c, 1 MB/s client", "s", lambda t: ctrl_c(t, 1e6)),
            ("stall RSS growth", "MB", lambda t: stall(t, args.stall)),
            (
                f"{args.sessions} sessions",
                "",
                lambda t: many_sessions(t, args.sessions, TYPING_RATE, args.typing),
            ),
            (
                f"closed loop, {args.sessions} sessions",
                "",
                lambda t: closed_loop_server(t, args.sessions, args.closed),
            ),
            (
                f"while {args.ending} sessions end, another's echo",
                "",
                lambda t: sessions_ending(t, args.ending),
            ),
            (
                f"stop with {args.sessions} sessions open",
                "s",
                lambda t: stop_time(t, args.sessions),
            ),
        ]:
            if args.only and not any(o in label for o in args.only):
                continue
            if label.startswith(("stall", f"{args.sessions} sessions", "stop")):
                # Memory figures need fresh processes: the floods before leave RSS high-water
                # marks behind that would hide growth.
                for t in targets:
                    stop(t)
                targets = start_targets(args)
            # The machine is shared and noisy: the cheap measures alternate the servers
            # `repeat` times and keep the median of each figure.
            runs = args.repeat if label.startswith(("throughput", "echo", "closed")) else 1
            samples: dict[str, list[Any]] = {t.name: [] for t in targets}
            for _ in range(runs):
                for t in targets:
                    print(f"... {label}: {t.name}", file=sys.stderr, flush=True)
                    samples[t.name].append(await fn(t))
                if label.startswith("throughput"):
                    print("... throughput: PTY floor", file=sys.stderr, flush=True)
                    floor.append(await pty_floor(args.megabytes))
                if label.startswith("echo"):
                    print("... echo: keystroke floor", file=sys.stderr, flush=True)
                    key_floor.append(await echo_floor(args.keys))
                if label.startswith("closed"):
                    print("... closed loop: keystroke floor", file=sys.stderr, flush=True)
                    loop_floor.append(await closed_loop_floor(args.sessions, args.closed))
            rows.append((label, unit, {n: median_of(v) for n, v in samples.items()}))
    finally:
        for t in targets:
            stop(t)

    peers = names[1:]
    header = ["measure", *names, *(f"mixvllm/{p}" for p in peers)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, unit, results in rows:
        per_target = {n: cells(label, unit, results[n]) for n in names}
        for i, (row_label, _, _) in enumerate(per_target["mixvllm"]):
            ours = per_target["mixvllm"][i][2]
            values = [per_target[n][i][1] for n in names]
            ratios = [ratio(ours, per_target[p][i][2]) for p in peers]
            print("| " + " | ".join([row_label, *values, *ratios]) + " |")
        if label.startswith("throughput"):
            rate, cpu = median_of(floor)
            print(f"| PTY floor (MB/s) | {rate:.1f} | (no server: the limit) |")
            print(f"| PTY floor CPU s per MB | {cpu:.4f} | |")
        if label.startswith("echo"):
            cpu, kernel, p50 = median_of(key_floor)
            print(
                f"| keystroke floor: CPU per key (µs), of which kernel | {cpu * 1e6:.0f}, "
                f"{kernel * 1e6:.0f} | (a bare relay: the limit) |"
            )
            print(f"| keystroke floor: echo p50 (ms) | {p50 * 1e3:.2f} | |")
        if label.startswith("closed"):
            p50, p99, cores, per_key = median_of(loop_floor)
            ours = results["mixvllm"][3]
            print(
                f"| {label}, keystroke floor: echo p50 / p99 (ms), cores, CPU per key (µs) "
                f"| {p50 * 1e3:.2f} / {p99 * 1e3:.2f}, {cores:.3f}, {per_key * 1e6:.0f} "
                f"| mixvllm CPU per key / floor's: {ours / per_key:.2f}x |"
            )
    load1 = os.getloadavg()
    cpus = os.cpu_count()
    print(f"load average (1 min): {load0[0]:.1f} at start, {load1[0]:.1f} at end; {cpus} CPUs")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pty-floor", type=int, metavar="MB", help=argparse.SUPPRESS)
    parser.add_argument("--echo-floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--stall", type=float, default=20.0)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--typing", type=float, default=10.0, help="seconds the sessions type")
    parser.add_argument(
        "--closed", type=float, default=10.0, help="seconds of each closed-loop window"
    )
    parser.add_argument("--ending", type=int, default=100, help="sessions that end together")
    parser.add_argument("--repeat", type=int, default=3, help="runs of throughput and echo")
    parser.add_argument("--only", action="append", help="run measures whose label has this")
    parser.add_argument(
        "--probe", metavar="DIR", help="run mixvllm under loop_probe.py, reports into DIR"
    )
    parser.add_argument("--before", metavar="DIR", help="also run the server of this checkout")
    parser.add_argument("--team", metavar="USER", help="also run it in team mode, as USER")
    args = parser.parse_args()
    if args.baseline_server:
        run_baseline()
        return 0
    if args.pty_floor:
        run_pty_floor(args.pty_floor)
        return 0
    if args.echo_floor:
        run_echo_floor()
        return 0
    if args.probe:
        os.environ[PROBE_ENV] = str(Path(args.probe).resolve())
        Path(args.probe).mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.megabytes, args.keys, args.stall, args.sessions, args.repeat = 10, 50, 3.0, 20, 1
        args.ending = 20
        args.typing = 2.0
        args.closed = 3.0
    return asyncio.run(run_all(args))


if __name__ == "__main__":
    sys.exit(main())
