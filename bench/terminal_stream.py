"""Benchmark: streamed, markdown-rendered answers to many pages at once, against terminado.

N sessions (50; --quick 10) each run the real `chat` (python -m chat_cli) in a real shell on
each server and ask it one question at the same moment. A local OpenAI-compatible server (a
separate process: tests/fake_openai.py's handler, paced) streams every request a long
markdown answer at --rate tokens/s (60): headings, prose, lists, code and a table. Its prose
carries unique markers (mkRRRxIIII: request, index), and the server notes when it wrote each
marker's chunk to its socket; the bench client notes when the marker's glyphs first arrive
on the page's WebSocket (both CLOCK_MONOTONIC, one machine).

Measured per server, with the ratio mixvllm / terminado:
  terminal server CPU   cores of the server process while the answers stream
  chat processes CPU    cores of everything under the server (the chats, their shells)
  token -> socket       p50 / p99 of (marker's glyphs at the page's socket - token sent)
  markers lost          markers the server sent that never reached the page (must be 0)

Targets (issue 23): server CPU <= 1/2 of terminado's; p99 token -> socket < 50 ms.
The client answers the cursor-position requests chat's prompt sends, as xterm.js does.
Run: .venv/bin/python bench/terminal_stream.py [--quick] [--before DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import terminal as tb  # noqa: E402  (bench/terminal.py: servers, clients, report helpers)

from tests.fake_openai import FakeServer, FakeState, Handler, chunk, tokens  # noqa: E402

MARK = "mk@@"  # in the answer; each request's stream makes it mkRRRxIIII
MARK_RE = re.compile(r"mk(\d{3})x(\d{4})")
PROMPT_READY = "\x1b[?2004h"  # chat's prompt turns bracketed paste on: it waits for input
CPR_REQUEST = "\x1b[6n"


# -- the streaming server (its own process) ---------------------------------------------------
def markdown_answer(n_tokens: int) -> str:
    """Markdown with markers in its prose and lists, cut to about n_tokens pieces."""
    blocks: list[str] = []
    section = 0
    while len(tokens("\n".join(blocks))) < n_tokens:
        section += 1
        prose = " ".join(
            f"{MARK}" if i % 8 == 0 else w
            for i, w in enumerate(
                ("streaming a long answer should feel instant on every page " * 4).split()
            )
        )
        blocks += [
            f"## Section {section}\n",
            prose + ".\n",
            "".join(f"- point {i} with **bold** text {MARK} here\n" for i in range(4)),
            "```python\ndef f(n: int) -> int:\n    return n * 2\n```\n",
            "| engine | tokens/s |\n|---|---|\n| vLLM | 2500 |\n| llama.cpp | 40 |\n",
        ]
    return "".join(tokens("\n".join(blocks))[:n_tokens])


def run_stream_server(out: Path, rate: float, n_tokens: int) -> None:
    """Serve the answer to every request at `rate` tokens/s; on SIGTERM write the send time
    of every marker to `out` and exit."""
    sent: list[tuple[str, float]] = []
    requests = itertools.count()

    class Paced(Handler):
        def _pieces(self, completions: bool) -> Iterator[bytes]:
            req = next(requests) % 1000
            marks = itertools.count()
            start = time.monotonic()
            for i, token in enumerate(tokens(self.state.answer)):
                time.sleep(max(0.0, start + i / rate - time.monotonic()))
                piece = token
                while MARK in piece:
                    piece = piece.replace(MARK, f"mk{req:03d}x{next(marks) % 10000:04d}", 1)
                yield chunk({"content": piece}, completions=completions)

        def _send(self, data: bytes) -> None:
            super()._send(data)
            if b"mk" in data:
                now = time.monotonic()
                for m in MARK_RE.finditer(data.decode("utf-8", "replace")):
                    sent.append((m.group(0), now))

    # A token delay keeps the handler off its send-it-all-at-once path; Paced does the pacing.
    server = FakeServer(FakeState(answer=markdown_answer(n_tokens), token_delay=1 / rate))
    server.RequestHandlerClass = Paced
    server.start()
    print(f"URL {server.url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    out.write_text(json.dumps(dict(sent)))
    os._exit(0)  # streams still running in their threads end with the process


# -- the pages ----------------------------------------------------------------------------------
async def read_until_prompt(c: tb.Conn, seen: dict[str, float] | None, timeout: float) -> None:
    """Read (and ack) until chat's prompt is ready; answer cursor-position requests; note the
    first arrival of every marker in `seen`."""
    tail = ""
    deadline = time.monotonic() + timeout
    while True:
        text = await c.frame(max(0.1, deadline - time.monotonic()))
        now = time.monotonic()
        c.ack()
        if text is None:
            raise EOFError("the session ended")
        window = tail + text
        if CPR_REQUEST in window:
            c.send("\x1b[1;1R")
        if os.environ.get("BENCH_STREAM_DEBUG"):
            print(repr(text[:300]), file=sys.stderr)
        if seen is not None and "mk" in window:
            for m in MARK_RE.finditer(window):
                seen.setdefault(m.group(0), now)
        if PROMPT_READY in window:
            return
        tail = window[-16:]


async def streamed(target: tb.Target, n: int, url: str, home: str) -> dict[str, Any]:
    chat = (
        f"cd {ROOT} && XDG_CONFIG_HOME={home} XDG_STATE_HOME={home} XDG_DATA_HOME={home} "
        f"exec {sys.executable} -m chat_cli --url {url}/v1 --model fake-model\r"
    )
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(tb.connect(target)) for _ in range(n)]
        for c in conns:  # chat starts in every session (a few at a time: 2 cores)
            c.send(chat)
        await asyncio.gather(*(read_until_prompt(c, None, 120) for c in conns))
        server = target.ps
        chats = server.children(recursive=True)

        def chats_cpu() -> float:
            total = 0.0
            for p in chats:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
            return total

        seen: dict[str, float] = {}
        cpu0, chat0, t0 = target.cpu(), chats_cpu(), time.monotonic()
        for c in conns:
            c.send("go\r")
        await asyncio.gather(*(read_until_prompt(c, seen, 300) for c in conns))
        wall = time.monotonic() - t0
        return {
            "server_cores": (target.cpu() - cpu0) / wall,
            "chat_cores": (chats_cpu() - chat0) / wall,
            "seen": seen,
            "wall": wall,
        }


class PtyPage:
    """A chat on a bare PTY the bench reads itself (no terminal server): the floor."""

    def __init__(self, fd: int, proc: subprocess.Popen[bytes]) -> None:
        self.fd, self.proc = fd, proc
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.fd)
        self.chunks.put_nowait(data)

    async def frame(self, timeout: float = tb.CAP_S) -> str | None:
        data = await asyncio.wait_for(self.chunks.get(), timeout)
        return data.decode("utf-8", "replace") if data else None

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def ack(self) -> None:
        pass

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            asyncio.get_running_loop().remove_reader(self.fd)
        self.proc.kill()
        self.proc.wait()
        os.close(self.fd)


async def streamed_floor(n: int, url: str, home: str) -> dict[str, Any]:
    """The same chats and question on bare PTYs read by this process: the delay no terminal
    server can go below on this machine at this moment (chat's rendering and the load)."""
    env = {**os.environ, "TERM": "xterm-256color", "XDG_CONFIG_HOME": home}
    env.update(XDG_STATE_HOME=home, XDG_DATA_HOME=home)
    pages = []
    for _ in range(n):
        master, slave = os.openpty()
        set_size(slave)
        proc = subprocess.Popen(
            [sys.executable, "-m", "chat_cli", "--url", f"{url}/v1", "--model", "fake-model"],
            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        pages.append(PtyPage(master, proc))
    try:
        await asyncio.gather(*(read_until_prompt(p, None, 120) for p in pages))  # type: ignore[arg-type]
        seen: dict[str, float] = {}
        t0 = time.monotonic()
        for p in pages:
            p.send("go\r")
        await asyncio.gather(*(read_until_prompt(p, seen, 300) for p in pages))  # type: ignore[arg-type]
        return {"server_cores": 0.0, "chat_cores": 0.0, "seen": seen, "wall": time.monotonic() - t0}
    finally:
        for p in pages:
            p.close()


def set_size(fd: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))


def delays(seen: dict[str, float], sent: dict[str, float]) -> tuple[float, float, int]:
    """(p50, p99 of token -> socket, markers lost) for the markers of requests in `seen`."""
    reqs = {k[:5] for k in seen}
    mine = {k: t for k, t in sent.items() if k[:5] in reqs}
    d = [seen[k] - t for k, t in mine.items() if k in seen]
    return tb.pct(d, 0.5), tb.pct(d, 0.99), sum(1 for k in mine if k not in seen)


async def run_all(args: argparse.Namespace) -> int:
    load0 = os.getloadavg()
    n_tokens = int(args.rate * args.seconds)
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    marks = work / "sent.json"
    streamer = subprocess.Popen(
        [sys.executable, __file__, "--stream-server", str(marks), str(args.rate), str(n_tokens)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert streamer.stdout is not None
    url = streamer.stdout.readline().split()[1]
    targets = tb.start_targets(args)
    names = [t.name for t in targets if t.name != "wetty"]
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    floor: list[dict[str, Any]] = []
    try:
        for _ in range(args.repeat):
            for t in targets:
                if t.name in names:
                    print(f"... {args.sessions} streamed answers: {t.name}", file=sys.stderr)
                    results[t.name].append(await streamed(t, args.sessions, url, str(work)))
            print(f"... {args.sessions} streamed answers: bare PTYs", file=sys.stderr)
            floor.append(await streamed_floor(args.sessions, url, str(work)))
    finally:
        for t in targets:
            tb.stop(t)
        streamer.send_signal(signal.SIGTERM)
        streamer.wait(30)
        streamer.stdout.close()
    sent = json.loads(marks.read_text())
    rows: dict[str, tuple[float, float, float, float, float]] = {}
    for name, runs in results.items():
        figures = [(r["server_cores"], r["chat_cores"], *delays(r["seen"], sent)) for r in runs]
        rows[name] = tb.median_of(figures)
    peers = names[1:]
    label = f"{args.sessions} pages, answers at {args.rate:g} tokens/s"
    header = ["measure", *names, *(f"mixvllm/{p}" for p in peers)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for i, (row, unit, scale) in enumerate(
        [
            ("terminal server cores", "{:.3f}", 1.0),
            ("chat processes cores", "{:.3f}", 1.0),
            ("token -> socket p50 (ms)", "{:.1f}", 1e3),
            ("token -> socket p99 (ms)", "{:.1f}", 1e3),
            ("markers lost", "{:.0f}", 1.0),
        ]
    ):
        ours = rows["mixvllm"][i]
        values = [unit.format(rows[n][i] * scale) for n in names]
        ratios = [tb.ratio(ours, rows[p][i]) for p in peers]
        print("| " + " | ".join([f"{label}: {row}", *values, *ratios]) + " |")
    p50, p99, lost = tb.median_of([delays(r["seen"], sent) for r in floor])
    print(
        f"| {label}, floor (chat on a bare PTY, no server): token -> PTY p50 / p99 (ms), lost "
        f"| {p50 * 1e3:.1f} / {p99 * 1e3:.1f}, {lost:.0f} | |"
    )
    load1 = os.getloadavg()
    print(
        f"load average (1 min): {load0[0]:.1f} at start, {load1[0]:.1f} at end; "
        f"{os.cpu_count()} CPUs; {args.repeat} run(s), medians"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream-server", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="10 sessions, 5 s answers")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--rate", type=float, default=60.0, help="tokens/s of each answer")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each answer")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the figures are medians")
    parser.add_argument("--before", metavar="DIR", help="also run the server of this checkout")
    # terminal.py's start_targets reads it; chat as another account is not measured here.
    parser.set_defaults(team=None)
    args = parser.parse_args()
    if args.stream_server:
        out, rate, n_tokens = args.stream_server
        run_stream_server(Path(out), float(rate), int(n_tokens))
        return 0
    if args.quick:
        args.sessions, args.seconds = 10, 5.0
    return asyncio.run(run_all(args))


if __name__ == "__main__":
    sys.exit(main())
