"""The model, per user, with real parts: the real embedded model behind the pass-through of a
team-mode server that runs as root in a throwaway namespace with two real accounts, nginx
with basic auth in front, and `chat` inside Alice's own session (team_support.py)."""

from __future__ import annotations

import base64
import json
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado import httpclient, websocket

from model_server import profiles
from tests.embedded_server import EmbeddedServer
from tests.prometheus_support import samples
from tests.support import wait_for_async
from tests.team_support import (
    PROXY_SOURCE,
    Account,
    nginx_proxy,
    reachable_python,
    throwaway_accounts,
)
from tests.terminal_support import TOKEN, Client, run, server_process

pytestmark = pytest.mark.embedded


class Stack:
    def __init__(self, proxy_port: int, server_port: int, alice: Account, bob: Account) -> None:
        self.proxy_port, self.server_port = proxy_port, server_port
        self.alice, self.bob = alice, bob

    def basic(self, who: Account) -> dict[str, str]:
        raw = f"{who.name}:{who.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    async def connect(self, who: Account) -> Client:
        url = f"ws://127.0.0.1:{self.proxy_port}/ws"
        conn = await websocket.websocket_connect(
            httpclient.HTTPRequest(url, headers=self.basic(who))
        )
        client = Client(conn, auto_ack=True)
        await client.wait_setup()
        return client

    async def metrics(self, who: Account) -> dict[Any, float]:
        resp = await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{self.proxy_port}/metrics", headers=self.basic(who)
        )
        return samples(resp.body.decode())


@pytest.fixture(scope="module")
def stack(embedded_model_server: EmbeddedServer) -> Iterator[Stack]:
    model = embedded_model_server
    with (
        throwaway_accounts(["alice", "bob"]) as (accounts, in_namespace),
        tempfile.TemporaryDirectory(prefix="mixvllm-model-team-") as scratch,
    ):
        Path(scratch).chmod(0o755)
        prefix = [*in_namespace, "sh", "-c", f'{reachable_python(Path(scratch))} && exec "$@"',
                  "sh"]  # fmt: skip
        env = {
            "MIXVLLM_TERMINAL_TOKEN": TOKEN,
            "VLLM_API_KEY": model.api_key,
            "MODEL_SERVER_URL": model.base_url,
            "MIXVLLM_STATE_DIR": str(Path(scratch) / "state"),
        }
        argv = ["--auth", "proxy", "--trusted-proxies", f"{PROXY_SOURCE}/32",
                "--no-autostart-chat", "--shell", "/bin/bash --norc --noprofile"]  # fmt: skip
        with server_process(*argv, env=env, prefix=prefix, stderr=sys.stderr.fileno()) as (
            _,
            url,
        ):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            with nginx_proxy(port, TOKEN, accounts) as proxy_port:
                yield Stack(proxy_port, port, *accounts)


async def _say(client: Client, command: str, marker: str, timeout: float = 10) -> str:
    start = len(client.output)
    client.type(command + "\r")
    pattern = re.compile(rf"{marker}<([A-Za-z0-9+/=._-]*)>")
    await wait_for_async(lambda: pattern.search(client.output, start), timeout, marker)
    match = pattern.search(client.output, start)
    assert match is not None
    return match.group(1)


def test_chat_in_a_team_session_answers_through_the_pass_through_and_is_counted(
    stack: Stack, embedded_model_server: EmbeddedServer
) -> None:
    async def body() -> None:
        alice = await stack.connect(stack.alice)
        try:
            env_b64 = await _say(alice, 'echo "ENV<$(env | base64 -w0)>"', "ENV")
            env = dict(
                line.split("=", 1)
                for line in base64.b64decode(env_b64).decode().splitlines()
                if "=" in line
            )
            # The model reports its usage, streamed (include_usage) or not.
            whole = await _chat(alice, "--no-stream")
            after_whole = await stack.metrics(stack.alice)
            streamed = await _chat(alice)
            after_streamed = await stack.metrics(stack.alice)
        finally:
            await alice.close()
        assert embedded_model_server.api_key not in base64.b64decode(env_b64).decode()
        assert env["VLLM_API_KEY"].startswith("mxu.alice.")
        assert "OPENAI_API_KEY" not in env
        assert env["MODEL_SERVER_URL"] == f"http://127.0.0.1:{stack.server_port}/model"
        # Her chat learns the engine's context per slot (llama-server's /props, only that) and
        # counts with its tokenizer, through the pass-through and with her own key.
        mine = {"Authorization": f"Bearer {env['VLLM_API_KEY']}"}
        props = await fetch(f"{env['MODEL_SERVER_URL']}/props", headers=mine)
        n_ctx = profiles.load("embedded").max_model_len
        assert json.loads(props.body) == {"default_generation_settings": {"n_ctx": n_ctx}}
        tokenized = await fetch(
            f"{env['MODEL_SERVER_URL']}/tokenize", method="POST", headers=mine,
            body=json.dumps({"content": "Name a colour."}),
        )  # fmt: skip
        assert 2 <= len(json.loads(tokenized.body)["tokens"]) <= 10
        assert whole["usage"]["estimated"] is False
        assert _counted(after_whole) == _usage(whole)  # the model's own count
        assert streamed["usage"]["estimated"] is False
        # Streamed too, the pass-through counts the model's own figures.
        prompt, completion = _counted(after_streamed)
        assert completion == _usage(whole)[1] + _usage(streamed)[1]
        assert prompt == _usage(whole)[0] + _usage(streamed)[0]
        assert after_streamed[("mixvllm_terminal_model_requests_total", (("user", "alice"),))] == 2
        # From outside, through the proxy: its Authorization (the server's token) is no key.
        outside = await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{stack.proxy_port}/model/v1/models",
            headers=stack.basic(stack.alice), raise_error=False,
        )  # fmt: skip
        assert outside.code == 401
        assert ("mixvllm_terminal_model_requests_total", (("user", "bob"),)) not in after_streamed

    run(body)


async def _chat(client: Client, *args: str) -> dict[str, Any]:
    flags = " ".join(args)
    line = (
        f"echo \"J<$(chat --json {flags} --max-tokens 16 --seed 1 'Name a colour.' | base64 -w0)>\""
    )
    answer: dict[str, Any] = json.loads(base64.b64decode(await _say(client, line, "J", 120)))
    assert answer["error"] is None and answer["content"], answer
    return answer


async def fetch(url: str, **kw: Any) -> httpclient.HTTPResponse:
    return await httpclient.AsyncHTTPClient().fetch(url, **kw)


def _usage(answer: dict[str, Any]) -> tuple[int, int]:
    return answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]


def _counted(metrics: dict[Any, float]) -> tuple[float, float]:
    tokens = "mixvllm_terminal_model_tokens_total"
    return (
        metrics[(tokens, (("kind", "prompt"), ("user", "alice")))],
        metrics[(tokens, (("kind", "completion"), ("user", "alice")))],
    )


def test_the_answer_streams_through_not_at_the_end(
    stack: Stack, embedded_model_server: EmbeddedServer
) -> None:
    async def body() -> None:
        alice = await stack.connect(stack.alice)
        try:
            key = await _say(alice, 'echo "K<$VLLM_API_KEY>"', "K")
        finally:
            await alice.close()
        arrivals: list[float] = []
        request = {
            "model": embedded_model_server.model, "max_tokens": 48, "seed": 1, "stream": True,
            "messages": [{"role": "user", "content": "Count from one to twenty in words."}],
        }  # fmt: skip
        start = time.monotonic()
        resp = await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{stack.server_port}/model/v1/chat/completions",
            method="POST", body=json.dumps(request),
            headers={"Authorization": f"Bearer {key}"}, request_timeout=120,
            streaming_callback=lambda chunk: arrivals.append(time.monotonic()),
        )  # fmt: skip
        end = time.monotonic()
        assert resp.code == 200
        # Many chunks, the first long before the answer ended: nothing waited for the whole.
        assert len(arrivals) > 10
        assert arrivals[0] - start < 0.5 * (end - start), (arrivals[0] - start, end - start)

    run(body)
