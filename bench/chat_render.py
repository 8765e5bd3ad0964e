"""Benchmark: how fast `chat` renders a streamed markdown answer, against raw deltas.

A local OpenAI-compatible SSE server (tests/fake_openai.py, which sends the whole stream as
fast as the socket takes it) serves a 4,000- and an 8,000-token markdown answer (prose,
lists, tables, code blocks). Two clients run in a real PTY, side by side in the same run:

  chat      the real pipeline: `python -m chat_cli` REPL, live markdown rendering, footer
  baseline  what `vllm chat` does: the openai SDK, printing raw deltas with flush

Each answer is asked for in an already running client (start-up is measured separately), timed
from Enter to the next prompt, with the client's CPU seconds. Prints tokens/s, CPU s, the
8k/4k time ratio (linear is 2.0) and chat's start-up time to the first prompt.

Also, on a terminal screen (pyte) fed by the PTY:
  first line   a 400-word paragraph streamed at 200 words/s: seconds from Enter until its
               first line is on screen for good (shown, and never gone again), both clients
  paste        bracketed pastes into chat's prompt (40 KB, 100 KB and 1 MB of lines, 1 MB in
               one line): seconds until the prompt shows the paste, and until its answer is drawn
  ctrl-c       Ctrl-C 0.5 to 3 s into an answer that is one 1 MB chunk: the longest wait for
               the next prompt

Targets (issue 3): >= 20,000 tokens/s, 8k/4k ratio <= 2.2, start-up <= 400 ms; (issue 10):
paste shown and Ctrl-C answered within 1 s, first line on screen within ~0.1 s of its words.
Run: .venv/bin/python bench/chat_render.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chat_support import XtermScreen  # noqa: E402
from tests.fake_openai import FakeServer, FakeState, chunk, tokens  # noqa: E402

PROMPT_READY = "\x1b[?2004h"
CPR_REQUEST = b"\x1b[6n"
SYNC_END = b"\x1b[?2026l"  # the end of one of chat's frames
XDG_VARS = ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME")
BASELINE_END = "<<answer-end>>"
BASELINE = f"""
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="none", max_retries=0)
while True:
    try:
        question = input("> ")
    except EOFError:
        break
    stream = client.chat.completions.create(
        model="fake-model", messages=[{{"role": "user", "content": question}}], stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print("\\n{BASELINE_END}", flush=True)
"""

PROSE = (
    "Streaming a long answer should feel instant: the renderer prints each finished block "
    "once and keeps only the unfinished tail live, so the cost stays linear in the length "
    "of the answer and the terminal never flickers or repeats a line. "
)
CODE = '''```python
def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    out = [0, 1]
    while len(out) < n:
        out.append(out[-1] + out[-2])
    return out[:n]


print(fibonacci(10))
```
'''
TABLE = """| engine | device | tokens/s | notes |
|--------|--------|----------|-------|
| vLLM | GPU | 2500 | paged attention |
| llama.cpp | CPU | 40 | GGUF, quantized |
| vLLM CPU | CPU | 25 | parity checks |
"""


def markdown_answer(n_tokens: int) -> str:
    """Markdown with headings, prose, lists, tables and code, cut to n_tokens pieces."""
    blocks: list[str] = []
    section = 0
    while len(tokens("\n".join(blocks))) < n_tokens:
        section += 1
        blocks += [
            f"## Section {section}\n",
            PROSE * 2,
            "".join(f"- point {i} about section {section}, with **bold** text\n" for i in range(5)),
            TABLE,
            CODE,
            "".join(f"{i}. step {i} of the plan\n" for i in range(1, 5)),
        ]
    return "".join(tokens("\n".join(blocks))[:n_tokens])


class PtyClient:
    """A client process on a real PTY, read with a plain os.read loop (pexpect's buffer
    handling is quadratic on large outputs and would measure itself, not the client)."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
        self.fd = master
        self.proc = subprocess.Popen(
            cmd, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.bytes_read = 0

    def read_until(self, marker: str, timeout: float = 120.0, *, also: str | None = None) -> None:
        """Read until `marker` (or `also`) has come."""
        needles = [m.encode() for m in (marker, also) if m is not None]
        tail = b""
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"no {marker!r} within {timeout} s")
            data = os.read(self.fd, 1 << 16)
            if not data:
                raise EOFError("client exited")
            self.bytes_read += len(data)
            window = tail + data
            if CPR_REQUEST in window:
                # Answer cursor-position requests as a terminal would; prompt-toolkit
                # otherwise waits for a reply before it draws the prompt.
                os.write(self.fd, b"\x1b[1;1R")
            if any(needle in window for needle in needles):
                return
            tail = window[-max(map(len, needles)) :]

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def close(self) -> None:
        self.send("\x04")  # Ctrl-D: both clients exit on EOF
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.fd)


def timed_answer(child: PtyClient, end_marker: str) -> tuple[float, float, int]:
    """Wall and CPU seconds from Enter to the client being ready again, and PTY bytes."""
    process = psutil.Process(child.proc.pid)
    cpu0 = sum(process.cpu_times()[:2])
    bytes0 = child.bytes_read
    started = time.perf_counter()
    child.send("go\r")
    child.read_until(end_marker)
    wall = time.perf_counter() - started
    cpu = sum(process.cpu_times()[:2]) - cpu0
    return wall, cpu, child.bytes_read - bytes0


def measure(
    client: str, server: FakeServer, env: dict[str, str], sizes: list[int], repeat: int
) -> dict[int, tuple[float, float, int, float]]:
    if client == "chat":
        cmd = [sys.executable, "-m", "chat_cli"]
        ready = PROMPT_READY
    else:
        cmd = [sys.executable, "-c", BASELINE, server.url + "/v1"]
        ready = BASELINE_END
    child = PtyClient(cmd, env)
    child.read_until(PROMPT_READY if client == "chat" else "> ")
    server.state.answer = "Warm up."
    timed_answer(child, ready)  # imports and connections are warm from here on
    results: dict[int, tuple[float, float, int, float]] = {}
    for size in sizes:
        server.state.answer = markdown_answer(size)
        runs = [timed_answer(child, ready) for _ in range(repeat)]
        results[size] = (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
            runs[-1][2],
            min(r[0] for r in runs),
        )
    child.close()
    return results


def startup_ms(server: FakeServer, env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        child = PtyClient([sys.executable, "-m", "chat_cli"], env)
        child.read_until(PROMPT_READY)
        times.append(time.perf_counter() - started)
        child.close()
    return statistics.median(times) * 1000


LOG_ROW = "a pasted log line with a few words in it, like a real log\n"
FIRST_WORDS = [f"p{i:03}" for i in range(400)]


def first_line_s(client: str, server: FakeServer, env: dict[str, str]) -> float:
    """Seconds from Enter until the paragraph's first word is on screen for good."""
    server.state.answer = "Warm up."
    child, ready = _start(client, server, env)
    timed_answer(child, ready)  # imports and connections are warm from here on
    server.state.answer = " ".join(FIRST_WORDS) + "\n"
    server.state.token_delay = 0.005
    screen = XtermScreen(120, 50)
    started = time.perf_counter()
    child.send("go\r")
    since: float | None = None
    tail, done = b"", False
    while not done:
        readable, _, _ = select.select([child.fd], [], [], 60)
        if not readable:
            raise TimeoutError("no end of the answer")
        data = os.read(child.fd, 1 << 16)
        screen.feed(data.decode(errors="replace"))
        window = tail + data
        done = ready.encode() in window
        if CPR_REQUEST in window:
            os.write(child.fd, b"\x1b[1;1R")  # as read_until does
        tail = window[-64:].replace(CPR_REQUEST, b"")
        if client == "chat" and not done and not data.endswith(SYNC_END):
            continue  # a frame drawn part-way: not what the user sees
        shown = any("p000" in row for row in screen.transcript())
        if shown and since is None:
            since = time.perf_counter() - started
        elif not shown:
            since = None  # not there yet, or there and gone again
    server.state.token_delay = 0.0
    child.close()
    return float("nan") if since is None else since


def _start(client: str, server: FakeServer, env: dict[str, str]) -> tuple[PtyClient, str]:
    if client == "chat":
        child = PtyClient([sys.executable, "-m", "chat_cli"], env)
        child.read_until(PROMPT_READY)
        return child, PROMPT_READY
    child = PtyClient([sys.executable, "-c", BASELINE, server.url + "/v1"], env)
    child.read_until("> ")
    return child, BASELINE_END


def paste_s(server: FakeServer, env: dict[str, str], size: int, row: str) -> tuple[float, float]:
    """Seconds until chat's prompt shows a bracketed paste of `size` bytes made of `row`s,
    and until the answer to it is drawn."""
    server.state.answer = "Got it."
    child, ready = _start("chat", server, env)
    text = (row * (size // len(row) + 1))[: size - 3] + "END"
    started = time.perf_counter()
    child.send("\x1b[200~" + text + "\x1b[201~")
    child.read_until("END", also="[pasted text")  # a long paste shows as a placeholder
    shown = time.perf_counter() - started
    child.send("\r")
    child.read_until(ready)
    answered = time.perf_counter() - started
    sent = server.state.requests[-1]["messages"][-1]["content"]
    assert sent == text, "the paste arrived whole"
    child.close()
    return shown, answered


def ctrl_c_s(server: FakeServer, env: dict[str, str]) -> float:
    """The longest wait from Ctrl-C to the next prompt, with Ctrl-C at several moments of an
    answer that is one 1 MB chunk (its reading, then its drawing)."""
    big = "".join(
        f"Paragraph {i:05} of a huge answer, with **bold** words.\n\n" for i in range(18_000)
    )
    server.state.raw_sse = (
        chunk({"role": "assistant", "content": ""})
        + chunk({"content": big})
        + chunk({}, "stop")
        + b"data: [DONE]\n\n"
    )
    waits = []
    for delay in (0.5, 1.0, 1.5, 2.0, 3.0):
        child, ready = _start("chat", server, env)
        child.send("go\r")
        child.read_until("\x1b[?2026h")  # the answer's first frame: the request is out
        time.sleep(delay)
        started = time.perf_counter()
        # What the terminal does on Ctrl-C (this PTY is not the client's controlling terminal).
        os.kill(child.proc.pid, signal.SIGINT)
        child.read_until(ready)
        waits.append(time.perf_counter() - started)
        child.close()
    server.state.raw_sse = None
    return max(waits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [4000, 8000]
    with tempfile.TemporaryDirectory() as tmp:
        server = FakeServer(FakeState()).start()
        env = {
            **os.environ,
            "MODEL_SERVER_URL": server.url,
            "TERM": "xterm-256color",
            "PYTHONPATH": str(ROOT),
            **{
                k: str(Path(tmp) / k)
                for k in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME")
            },
        }
        try:
            results = {c: measure(c, server, env, sizes, args.repeat) for c in ("baseline", "chat")}
            start = startup_ms(server, env, max(3, args.repeat))
            first = {c: first_line_s(c, server, env) for c in ("baseline", "chat")}
            pastes = {
                (size, kind): paste_s(server, env, size, row)
                for size, kind, row in (
                    (40_000, "lines", LOG_ROW),
                    (100_000, "lines", LOG_ROW),
                    (1_000_000, "lines", LOG_ROW),
                    (1_000_000, "one line", '{"key": "value", "n": 12345}, '),
                )
            }
            interrupt = ctrl_c_s(server, env)
        finally:
            server.stop()

    print(f"medians of {args.repeat} runs; 'best' is the fastest run (timeit's convention)")
    header = ("client", "tokens", "wall s", "CPU s", "tokens/s", "best t/s", "PTY KiB")
    print("{:<10} {:>7} {:>8} {:>7} {:>10} {:>10} {:>8}".format(*header))
    for client, by_size in results.items():
        for size, (wall, cpu, nbytes, best) in by_size.items():
            print(
                f"{client:<10} {size:>7} {wall:>8.3f} {cpu:>7.3f} {size / wall:>10,.0f}"
                f" {size / best:>10,.0f} {nbytes / 1024:>8.0f}"
            )
    for client, by_size in results.items():
        ratio = by_size[8000][0] / by_size[4000][0]
        cpu_ratio = by_size[8000][1] / max(by_size[4000][1], 1e-9)
        print(
            f"{client}: 8k/4k time ratio {ratio:.2f}, CPU ratio {cpu_ratio:.2f} "
            "(linear = 2.0, target <= 2.2)"
        )
    chat, base = results["chat"], results["baseline"]
    print(
        f"chat vs baseline (8k): {chat[8000][0] / base[8000][0]:.2f}x the wall time, "
        f"{chat[8000][1] / max(base[8000][1], 1e-9):.2f}x the CPU"
    )
    print(
        f"chat throughput (8k): {8000 / chat[8000][0]:,.0f} tokens/s wall, "
        f"{8000 / max(chat[8000][1], 1e-9):,.0f} tokens per CPU second (target >= 20,000; "
        "wall figures need an idle machine, CPU figures hold under load)"
    )
    print(f"chat start-up to first prompt: {start:.0f} ms (median, target <= 400 ms)")
    stream_s = len(FIRST_WORDS) * 0.005
    print(
        f"first line of a {len(FIRST_WORDS)}-word paragraph ({stream_s:.1f} s of streaming) on "
        f"screen for good after: baseline {first['baseline']:.2f} s, chat {first['chat']:.2f} s"
    )
    for (size, kind), (shown, answered) in pastes.items():
        print(
            f"paste {size / 1000:,.0f} KB ({kind}): shown after {shown:.2f} s, answered after "
            f"{answered:.2f} s (target: shown <= 1 s)"
        )
    print(
        f"Ctrl-C during a 1 MB chunk: prompt back after {interrupt:.2f} s at most (target <= 1 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
