"""Benchmark: the terminal server's memory under uploads from a stranger (issue 19, item 1).

Starts `python -m terminal_server` (a token, loopback) and sends N parallel POSTs of SIZE MB
each with no token and a wrong Host, as fast as the socket takes them. Prints the server's
RSS before, its peak while the uploads run (sampled every 10 ms) and after, and what each
upload got back (a status line, or how the server hung up) with the bytes it took. Then
--held connections each send 60 KiB of a header that never ends (no token) and stay open:
the server's RSS with all of them open, and how many it still holds after a second.

Run: .venv/bin/python bench/unauth_upload.py [--uploads 4] [--mb 100] [--held 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
CHUNK = b"x" * (1024 * 1024)


async def upload(port: int, mb: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /api/share?session=x HTTP/1.1\r\nHost: evil.example:{port}\r\n"
        f"Content-Length: {mb * len(CHUNK)}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    writer.write(head.encode())
    sent = 0
    outcome = "?"
    try:
        for _ in range(mb):
            writer.write(CHUNK)
            await writer.drain()
            sent += len(CHUNK)
        line = await asyncio.wait_for(reader.readline(), 60)
        outcome = line.decode(errors="replace").strip() or "closed, no answer"
    except (ConnectionError, OSError) as exc:
        outcome = f"hung up ({type(exc).__name__})"
        try:  # the answer may have come before the hang-up
            line = await asyncio.wait_for(reader.readline(), 1)
            if line:
                outcome += f", answered {line.decode(errors='replace').strip()}"
        except (ConnectionError, OSError, TimeoutError):
            pass
    finally:
        writer.transport.abort()
    return f"{outcome} after {sent / 2**20:.0f} MB sent"


async def sample_peak(proc: psutil.Process, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, proc.memory_info().rss)
        await asyncio.sleep(0.01)
    return max(peak, proc.memory_info().rss)


async def hold_headers(port: int, pid: int, count: int) -> None:
    proc = psutil.Process(pid)
    before = proc.memory_info().rss
    conns = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 60 * 1024)
        conns.append((reader, writer))
    await asyncio.gather(*(w.drain() for _, w in conns), return_exceptions=True)
    await asyncio.sleep(1)  # let the server read what it will
    after = proc.memory_info().rss
    ours = {w.get_extra_info("sockname")[1] for _, w in conns}
    held = sum(
        1
        for c in proc.net_connections("tcp")
        if c.raddr and c.raddr.port in ours and c.status == "ESTABLISHED"
    )
    print(
        f"{count} connections with 60 KiB of unfinished headers: server RSS "
        f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB, {held} still open"
    )
    for _, writer in conns:
        writer.transport.abort()


async def measure(port: int, pid: int, uploads: int, mb: int) -> None:
    proc = psutil.Process(pid)
    before = proc.memory_info().rss
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(sample_peak(proc, stop))
    t0 = time.monotonic()
    outcomes = await asyncio.gather(*(upload(port, mb) for _ in range(uploads)))
    elapsed = time.monotonic() - t0
    stop.set()
    peak = await sampler
    after = proc.memory_info().rss
    mib = 2**20
    print(f"{uploads} x {mb} MB unauthenticated uploads, wrong Host, no token ({elapsed:.1f} s)")
    print(
        f"server RSS: before {before / mib:.1f} MiB, peak {peak / mib:.1f} MiB, "
        f"after {after / mib:.1f} MiB"
    )
    for i, outcome in enumerate(outcomes):
        print(f"  upload {i}: {outcome}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=4)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--held", type=int, default=200)
    args = parser.parse_args()
    env = {**os.environ, "MIXVLLM_TERMINAL_TOKEN": "bench-token-0123456789"}
    server = subprocess.Popen(
        [sys.executable, "-m", "terminal_server", "--port", "0", "--no-autostart-chat"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        match = re.search(r":(\d+)/", server.stdout.readline())
        assert match is not None, "no banner from the server"
        port = int(match.group(1))
        asyncio.run(measure(port, server.pid, args.uploads, args.mb))
        asyncio.run(hold_headers(port, server.pid, args.held))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)


if __name__ == "__main__":
    main()
