"""The router's cost: time to first token and tokens/s, direct to a replica vs through
vLLM's router in front of it, same model, same prompts, interleaved run by run.

Start the replicas and the router first (docs/deployment-replicas.md; locally:
`mixvllm-serve --profile cpu-vllm --port 18101`, `... --port 18102`, then `vllm-router
--worker-urls http://127.0.0.1:18101 http://127.0.0.1:18102 --policy consistent_hash
--port 18100`), then:
  .venv/bin/python bench/router.py --direct http://127.0.0.1:18101 --router http://127.0.0.1:18100
Every request carries the same X-Session-ID, so through the router it reaches one replica;
`--direct` should name that replica; greedy answers must agree token for token either way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.request
from dataclasses import dataclass

PROMPTS = (
    "Explain what a pseudo-terminal is.",
    "Write a short poem about the sea.",
    "List five uses of a hash table.",
    "Describe how a web browser loads a page.",
)
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Run:
    ttft: float
    tok_s: float
    text: str


def run(base: str, key: str, model: str, prompt: str, session: str, tokens: int) -> Run:
    body = {
        "model": model, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens, "temperature": 0, "stream": True, "ignore_eos": True,
    }  # fmt: skip
    request = urllib.request.Request(
        f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                 "X-Session-ID": session},
    )  # fmt: skip
    started = time.monotonic()
    first = last = 0.0
    pieces: list[str] = []
    with NO_PROXY.open(request, timeout=300) as reply:
        for line in reply:
            if not line.startswith(b"data: {"):
                continue
            choices = json.loads(line[6:])["choices"]
            text = choices[0]["delta"].get("content") if choices else None
            if text:
                last = time.monotonic()
                first = first or last
                pieces.append(text)
    return Run(first - started, (len(pieces) - 1) / max(last - first, 1e-9), "".join(pieces))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--direct", required=True)
    parser.add_argument("--router", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    key = os.environ.get("VLLM_API_KEY", "")
    results: dict[str, list[Run]] = {"direct": [], "router": []}
    for i in range(args.runs):
        for prompt in PROMPTS:
            # Alternate which goes first, so neither always meets a warm cache.
            order = ("direct", "router") if i % 2 == 0 else ("router", "direct")
            for name in order:
                base = args.direct if name == "direct" else args.router
                results[name].append(run(base, key, args.model, prompt, "bench", args.tokens))
    for d, r in zip(results["direct"], results["router"], strict=True):
        assert d.text == r.text, "the router sent the session to another replica than --direct"
    print(
        f"{'':8}{'TTFT median ms':>16}{'tok/s median':>14}  ({len(results['direct'])} answers each)"
    )
    for name, runs in results.items():
        ttft = statistics.median(x.ttft for x in runs) * 1000
        print(f"{name:8}{ttft:16.1f}{statistics.median(x.tok_s for x in runs):14.1f}")
    d_ttft = statistics.median(x.ttft for x in results["direct"])
    r_ttft = statistics.median(x.ttft for x in results["router"])
    d_tps = statistics.median(x.tok_s for x in results["direct"])
    r_tps = statistics.median(x.tok_s for x in results["router"])
    print(f"router adds {1000 * (r_ttft - d_ttft):+.1f} ms TTFT; tok/s ratio {r_tps / d_tps:.3f}")


if __name__ == "__main__":
    main()
