"""Benchmark: what a one-shot `chat --json "hi"` costs on top of the model server's own time.

Against the real embedded model server (llama.cpp + SmolLM2; `--fake` uses tests/fake_openai.py
instead), interleaved, the same short request (8 tokens, seed 1, temperature 0) is made by:

  server    an in-process raw HTTP client: the server's own time, the floor
  python    `python -c pass`: the interpreter's start-up, which no Python CLI escapes
  sdk       a one-shot openai-SDK client (what chat did before it spoke HTTP itself)
  chat      `python -m chat_cli --json` from this checkout (and from `--compare DIR`)

Overhead = median wall time minus the server's median; for chat also, run by run, its wall time
minus its own request's total (the JSON's total_s), which a loaded server's jitter cannot blur.
Also prints chat's reported TTFT against the raw client's (start-up work counted in TTFT would
show here).

Target (issue 13): chat's one-shot overhead <= 250 ms.
Run: .venv/bin/python bench/chat_startup.py [--repeat 10] [--fake] [--compare ../main]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.embedded_server import installed, run_embedded  # noqa: E402
from tests.fake_openai import FakeServer, FakeState  # noqa: E402

CONTENT = re.compile(rb'"content":\s*"[^"]')
PARAMS = {"max_tokens": 8, "seed": 1, "temperature": 0.0}
SDK_CLIENT = """
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
stream = client.chat.completions.create(
    model=sys.argv[3], messages=[{"role": "user", "content": "hi"}], stream=True,
    max_tokens=8, seed=1, temperature=0.0,
)
print("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
"""


@contextmanager
def model_server(fake: bool, tmp: Path) -> Iterator[tuple[str, str, str]]:
    """(base URL ending in /v1, API key, model)."""
    if fake:
        server = FakeServer(FakeState()).start()
        try:
            yield server.url + "/v1", "none", "fake-model"
        finally:
            server.stop()
        return
    ok, why = installed()
    if not ok:
        raise SystemExit(why + " (or run with --fake)")
    with run_embedded(tmp / "state") as embedded:
        yield embedded.base_url, embedded.api_key, embedded.model


def raw_request(base_url: str, key: str, model: str) -> tuple[float, float]:
    """(TTFT, total) of one streamed request, from the request leaving, in-process."""
    host, port = base_url.split("//")[1].split("/", maxsplit=1)[0].split(":")
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True,
         "stream_options": {"include_usage": True}, **PARAMS}
    )  # fmt: skip
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/chat/completions", body, {
        "Authorization": f"Bearer {key}", "Content-Type": "application/json",
    })  # fmt: skip
    response = conn.getresponse()
    ttft = None
    seen = b""
    while data := response.read1(65536):
        if ttft is None and CONTENT.search(data):
            ttft = time.perf_counter() - started
        seen = seen[-16:] + data
        if b"[DONE]" in seen:  # where chat stops reading too
            break
    total = time.perf_counter() - started
    conn.close()
    return ttft or total, total


def timed(cmd: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, str]:
    # cwd matters: `python -m` imports from it before PYTHONPATH.
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                            stdin=subprocess.DEVNULL, timeout=120, cwd=cwd)  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {result.stderr.strip()}")
    return wall, result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--fake", action="store_true", help="the fake server, not the model")
    parser.add_argument("--compare", type=Path, help="another checkout's chat, side by side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with model_server(args.fake, tmp) as (base_url, key, model):
            env = {
                **os.environ, "MODEL_SERVER_URL": base_url, "VLLM_API_KEY": key,
                **{k: str(tmp / k) for k in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME")},
            }  # fmt: skip
            chat_args = ["-m", "chat_cli", "--json", "--max-tokens", "8", "--seed", "1"]
            chat_args += ["--temperature", "0", "hi"]
            clients: dict[str, Callable[[], tuple[float, str]]] = {
                "python": lambda: timed([sys.executable, "-c", "pass"], env),
                "sdk": lambda: timed([sys.executable, "-c", SDK_CLIENT, base_url, key, model], env),
            }
            checkouts = {"chat": ROOT, **({"chat (compare)": args.compare} if args.compare else {})}
            for name, root in checkouts.items():
                chat_env = {**env, "PYTHONPATH": str(root.resolve())}
                clients[name] = lambda e=chat_env, r=root: timed([sys.executable, *chat_args], e, r)
            raw_request(base_url, key, model)  # the server's first answer warms its caches
            server: list[tuple[float, float]] = []
            walls: dict[str, list[float]] = {name: [] for name in clients}
            ttfts: dict[str, list[float]] = {name: [] for name in checkouts}
            own: dict[str, list[float]] = {name: [] for name in checkouts}
            for _ in range(args.repeat):
                server.append(raw_request(base_url, key, model))
                for name, run in clients.items():
                    wall, out = run()
                    walls[name].append(wall)
                    if name in ttfts:
                        timings = json.loads(out)["timings"]
                        ttfts[name].append(timings["ttft_s"])
                        own[name].append(wall - timings["total_s"])
    floor = statistics.median(total for _, total in server)
    print(f"medians of {args.repeat} interleaved runs against the "
          f"{'fake' if args.fake else 'embedded'} server")  # fmt: skip
    print(f"{'client':<16} {'wall ms':>8} {'overhead ms':>12}")
    print(f"{'server':<16} {floor * 1000:>8.0f} {0:>12.0f}")
    for name, values in walls.items():
        wall = statistics.median(values)
        print(f"{name:<16} {wall * 1000:>8.0f} {(wall - floor) * 1000:>12.0f}")
    raw_ttft = statistics.median(ttft for ttft, _ in server)
    for name, values in ttfts.items():
        print(f"{name} reported TTFT {statistics.median(values) * 1000:.1f} ms "
              f"(raw client {raw_ttft * 1000:.1f} ms)")  # fmt: skip
    for name, values in own.items():
        print(f"{name}: wall minus its own request, per run: "
              f"{statistics.median(values) * 1000:.0f} ms")  # fmt: skip
    overhead = statistics.median(own["chat"])
    print(f"chat one-shot overhead: {overhead * 1000:.0f} ms (target <= 250 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
