"""Benchmark: the model pass-through of the team modes against the model server itself.

Against the real embedded model server (llama.cpp + SmolLM2), interleaved (the order swapped
each round), the same streamed request (32 tokens, seed 1, temperature 0) is sent by one raw
HTTP client:

  direct    to the model server, with its key: the floor
  proxied   to a team-mode terminal server's `{base}model/v1/chat/completions` with a
            user's key (the server in its own process, as deployed)

Per answer: time to first token (request sent -> first text event) and tokens/s (text events
after the first / the time they took). Prints medians, p90s and the ratios proxied/direct,
and the terminal server's CPU per answer.

Target (issue 20): the pass-through adds nothing a user notices (TTFT and tokens/s within a
few percent of direct).
Run: .venv/bin/python bench/model_proxy.py [--repeat 20] [--tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tornado import netutil  # noqa: E402

from terminal_server.app import make_context, make_http_server  # noqa: E402
from terminal_server.config import load_config  # noqa: E402
from tests.embedded_server import installed, run_embedded  # noqa: E402

PARAMS: dict[str, object] = {"max_tokens": 32, "seed": 1, "temperature": 0.0, "stream": True}
PROMPT = "Write a short paragraph about the sea."
TOKEN = "bench-token-0123456789"


def serve(model_url: str) -> None:
    """The terminal server in team mode; prints its port and a user's model key."""

    async def main() -> None:
        config = load_config(["--auth", "proxy", "--port", "0", "--audit-log", "off"],
                             {"MIXVLLM_TERMINAL_TOKEN": TOKEN, "MODEL_SERVER_URL": model_url,
                              "VLLM_API_KEY": os.environ["BENCH_MODEL_KEY"],
                              "MIXVLLM_STATE_DIR": os.environ["BENCH_STATE"]})  # fmt: skip
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        config = dataclasses.replace(config, port=sockets[0].getsockname()[1])
        ctx = make_context(config)
        make_http_server(ctx).add_sockets(sockets)
        print(config.port, ctx.model_keys.key_for("bench"), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def one(url: str, key: str, model: str) -> tuple[float, float]:
    """(TTFT s, tokens/s) of one streamed answer."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    body = json.dumps({**PARAMS, "model": model,
                       "messages": [{"role": "user", "content": PROMPT}]})  # fmt: skip
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    start = time.perf_counter()
    conn.request("POST", parts.path + "/chat/completions", body, headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    arrivals = []
    for line in resp:
        if line.startswith(b"data: {") and b'"content": "' in line and b'"content": ""' not in line:
            arrivals.append(time.perf_counter())
    conn.close()
    assert len(arrivals) > 2, "no answer"
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return arrivals[0] - start, rate


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"{name:<24} median {statistics.median(values):8.4f}  p90 {p90:8.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each answer")
    parser.add_argument("--serve", metavar="MODEL_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    PARAMS["max_tokens"] = args.tokens
    if args.serve:
        serve(args.serve)
        return 0
    ok, why = installed()
    if not ok:
        print(f"skipped: {why}")
        return 0
    with tempfile.TemporaryDirectory() as tmp, run_embedded(Path(tmp)) as model:
        env = {**os.environ, "BENCH_MODEL_KEY": model.api_key, "BENCH_STATE": tmp,
               "PYTHONPATH": str(ROOT)}  # fmt: skip
        proc = subprocess.Popen([sys.executable, __file__, "--serve", model.base_url],
                                env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stdout is not None
            port, key = proc.stdout.readline().split()
            proxied_url = f"http://127.0.0.1:{port}/model/v1"
            one(model.base_url, model.api_key, model.model)  # warm both paths up
            one(proxied_url, key, model.model)
            results: dict[str, list[tuple[float, float]]] = {"direct": [], "proxied": []}
            proxy_cpu = 0.0
            for i in range(args.repeat):
                order = ["direct", "proxied"] if i % 2 == 0 else ["proxied", "direct"]
                for which in order:
                    if which == "direct":
                        results[which].append(one(model.base_url, model.api_key, model.model))
                    else:
                        before = cpu_s(proc.pid)
                        results[which].append(one(proxied_url, key, model.model))
                        proxy_cpu += cpu_s(proc.pid) - before
        finally:
            proc.terminate()
            proc.wait()
    print(f"{args.repeat} streamed answers each, interleaved ({PARAMS['max_tokens']} tokens)")
    med = {}
    for which, rows in results.items():
        ttft, rate = [r[0] for r in rows], [r[1] for r in rows]
        med[which] = (statistics.median(ttft), statistics.median(rate))
        print(summary(f"{which} TTFT s", ttft))
        print(summary(f"{which} tokens/s", rate))
    print(f"ratio proxied/direct: TTFT {med['proxied'][0] / med['direct'][0]:.3f}, "
          f"tokens/s {med['proxied'][1] / med['direct'][1]:.3f}")  # fmt: skip
    print(f"terminal server CPU per proxied answer: {1000 * proxy_cpu / args.repeat:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
