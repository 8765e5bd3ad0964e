"""Parity checks against real vLLM (its CPU build), started through the launcher's cpu-vllm profile.

What the chat CLI and the terminal rely on from vLLM, checked on the real server rather than
on llama.cpp or a fake: the usage chunk of a stream, /health, Prometheus metrics, the API key
on /v1, and error responses. One server start (~40 s) serves the whole module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pexpect
import pytest

from model_server import profiles
from tests import vllm_cpu
from tests.conftest import require
from tests.mcp_server import SECRET
from tests.support import isolated_home, wait_for

# Server start-up counts against the first test's timeout; on 2 busy cores it can take minutes.
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(420)]

PROFILE = "cpu-vllm"
API_KEY = "parity-test-key"
CHAT = Path(sys.executable).with_name("chat")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[vllm_cpu.Server]:
    ok, why = vllm_cpu.installed()
    require(ok, why)
    model = profiles.load(PROFILE).served_model_name
    with vllm_cpu.serve(PROFILE, model, api_key=API_KEY) as running:
        yield running


@pytest.fixture
def client(server: vllm_cpu.Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0) as c:
        yield c


def auth(server: vllm_cpu.Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def metric(server: vllm_cpu.Server, name: str) -> float:
    """Sum of a Prometheus sample over its labels (one engine, one model here)."""
    text = httpx.get(f"{server.root}/metrics", timeout=10).text
    values = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    assert values, f"{name} not in /metrics"
    return sum(float(v) for v in values)


def wait_metric(server: vllm_cpu.Server, name: str, want: float, timeout: float = 10.0) -> float:
    """vLLM updates its counters right after a request: wait until `name` reaches `want`."""
    wait_for(lambda: metric(server, name) >= want, timeout, f"{name} >= {want}")
    return metric(server, name)


def chat_env(server: vllm_cpu.Server, tmp: Path, key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "OPENAI_", "VLLM_"))}
    env.update(
        MODEL_SERVER_URL=server.root,
        VLLM_API_KEY=server.api_key if key is None else key,
        TERM="xterm-256color",
    )
    env.update(isolated_home(tmp))  # keep the user's config, history and autosaves out
    return env


def run_chat(
    server: vllm_cpu.Server, tmp: Path, *args: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = chat_env(server, tmp, key)
    return subprocess.run(
        [str(CHAT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_health_answers_without_key(server: vllm_cpu.Server) -> None:
    response = httpx.get(f"{server.root}/health", timeout=10)
    assert response.status_code == 200


def test_models_lists_the_profile_model_and_context(server: vllm_cpu.Server) -> None:
    profile = profiles.load(PROFILE)
    response = httpx.get(f"{server.base_url}/models", headers=auth(server), timeout=10)
    assert response.status_code == 200
    [card] = response.json()["data"]
    assert card["id"] == profile.served_model_name
    assert card["owned_by"] == "vllm"
    assert card["max_model_len"] == profile.max_model_len


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}])
def test_api_key_enforced_on_v1(server: vllm_cpu.Server, headers: dict[str, str]) -> None:
    assert httpx.get(f"{server.base_url}/models", headers=headers, timeout=10).status_code == 401
    body = {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    response = httpx.post(
        f"{server.base_url}/chat/completions", json=body, headers=headers, timeout=30
    )
    assert response.status_code == 401


def test_stream_ends_with_usage_chunk(client: openai.OpenAI, server: vllm_cpu.Server) -> None:
    stream = client.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        # vLLM's own sampling extension: run to max_tokens, so the count is exact.
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    *content_chunks, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 12
    assert last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + 12
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks if c.choices)
    assert text.strip()
    finish = [c.choices[0].finish_reason for c in content_chunks if c.choices]
    assert finish[-1] == "length"
    assert all(c.usage is None for c in content_chunks)
    assert len({c.id for c in chunks}) == 1


def test_metrics_expose_vllm_gauges_and_count_tokens(
    client: openai.OpenAI, server: vllm_cpu.Server
) -> None:
    for gauge in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ):
        metric(server, gauge)
    before = metric(server, "vllm:generation_tokens_total")
    client.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "Count."}],
        max_tokens=5,
        extra_body={"ignore_eos": True},
    )
    assert wait_metric(server, "vllm:generation_tokens_total", before + 5) == before + 5
    assert metric(server, "vllm:num_requests_running") == 0


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_beyond_context_is_400_with_message(
    client: openai.OpenAI, server: vllm_cpu.Server, stream: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=100_000,
            stream=stream,
        )
    assert caught.value.status_code == 400
    assert "max_model_len=2048" in caught.value.message


def test_prompt_beyond_context_is_400_naming_the_limit(
    client: openai.OpenAI, server: vllm_cpu.Server
) -> None:
    # What a long chat history runs into: vLLM refuses it up front instead of truncating.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": "word " * 3000}],
            max_tokens=16,
            stream=True,
        )
    assert caught.value.status_code == 400
    assert "2048" in caught.value.message, caught.value.message


def test_unknown_model_is_404_naming_the_served_one(
    client: openai.OpenAI, server: vllm_cpu.Server
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    assert server.model in caught.value.message


def test_profile_sampling_defaults_reach_the_engine(
    client: openai.OpenAI, server: vllm_cpu.Server
) -> None:
    # With a fixed seed, vLLM samples deterministically for a given set of parameters, so a
    # request without sampling fields must answer exactly like one that spells out the
    # profile's defaults (passed to vLLM as --override-generation-config).
    sampling = profiles.load(PROFILE).sampling
    explicit = {k: sampling[k] for k in ("temperature", "top_p")}
    extra = {k: sampling[k] for k in ("top_k", "min_p")}
    ask = {
        "model": server.model,
        "messages": [{"role": "user", "content": "Tell me a fact about the sea."}],
        "max_tokens": 24,
        "seed": 7,
    }
    implicit = client.chat.completions.create(**ask).choices[0].message.content
    spelled = client.chat.completions.create(**ask, **explicit, extra_body=extra)
    assert implicit == spelled.choices[0].message.content


def test_structured_output_follows_the_json_schema(
    client: openai.OpenAI, server: vllm_cpu.Server
) -> None:
    # Guided decoding (xgrammar) runs on the CPU build without triton, which the install drops.
    schema = {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "count": {"enum": [1, 2, 3]},
        },
        "required": ["colour", "count"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "Pick a colour and a count, as JSON."}],
        max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    data = json.loads(choice.message.content or "")
    assert set(data) == {"colour", "count"}
    assert data["colour"] in {"red", "green", "blue"}
    assert data["count"] in {1, 2, 3}


def test_chat_cli_one_shot_streams_a_real_answer(server: vllm_cpu.Server, tmp_path: Path) -> None:
    before = metric(server, "vllm:generation_tokens_total")
    result = run_chat(
        server, tmp_path, "--plain", "--max-tokens", "24", "Say hello in one short sentence."
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "Traceback" not in result.stdout + result.stderr
    assert wait_metric(server, "vllm:generation_tokens_total", before + 1) > before


def test_chat_cli_in_a_terminal_streams_a_real_answer(
    server: vllm_cpu.Server, tmp_path: Path, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    # The same one-shot on a real PTY: the live markdown renderer, not the plain pipe path.
    before = metric(server, "vllm:generation_tokens_total")
    child = spawn_chat(
        "--max-tokens", "24", "Say hello in one short sentence.",
        env=chat_env(server, tmp_path), program=[str(CHAT)], timeout=120, dimensions=(24, 80),
    )  # fmt: skip
    child.expect(pexpect.EOF)
    child.close()
    output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before or "")
    assert child.exitstatus == 0, output
    assert output.strip()
    assert "Traceback" not in output
    assert wait_metric(server, "vllm:generation_tokens_total", before + 1) > before


def test_chat_cli_json_reports_vllm_usage(server: vllm_cpu.Server, tmp_path: Path) -> None:
    before = metric(server, "vllm:generation_tokens_total")
    result = run_chat(server, tmp_path, "--json", "--max-tokens", "16", "Name a fruit.")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    usage = report["usage"]
    assert 1 <= usage["completion_tokens"] <= 16
    after = wait_metric(server, "vllm:generation_tokens_total", before + usage["completion_tokens"])
    assert after - before == usage["completion_tokens"]


def test_chat_cli_bad_key_is_one_clear_line(server: vllm_cpu.Server, tmp_path: Path) -> None:
    result = run_chat(server, tmp_path, "--plain", "hi", key="wrong-key")
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert re.search(r"key|401|unauthori", lines[0], re.IGNORECASE), lines[0]


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        # chat knows vLLM's max_model_len (2048): far over it, the request is not sent at all.
        (("--max-tokens", "100000"), "not sent: it would not fit the model's context"),
        # A value chat lets through and vLLM refuses (top_p must be in (0, 1]): vLLM's 400.
        (("--top-p", "0"), "top_p"),
    ],
)
def test_chat_cli_server_error_is_one_clear_line(
    server: vllm_cpu.Server, tmp_path: Path, flags: tuple[str, str], said: str
) -> None:
    result = run_chat(server, tmp_path, "--plain", *flags, "hi")
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert said in lines[0], lines[0]


def test_chat_cli_round_trip_through_an_mcp_tool(server: vllm_cpu.Server, tmp_path: Path) -> None:
    # model -> tool call -> MCP tool -> result -> final answer, on the real server: the named
    # tool_choice makes even this tiny model call the tool (vLLM needs the profile's
    # --enable-auto-tool-choice --tool-call-parser hermes), and chat sends the result back.
    mcp = f"tests={sys.executable} {ROOT / 'tests' / 'mcp_server.py'}"
    result = run_chat(
        server, tmp_path, "--json", "--yes", "--max-tokens", "160", "--temperature", "0",
        "--seed", "1", "--mcp", mcp,
        "--tool-choice", "secret_word", "What is the secret word?",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [call] = report["tool_calls"]
    assert call["name"] == "secret_word"
    assert call["result"] == f"The secret word is {SECRET}.", call
    assert not call["error"]
    assert SECRET.split("-")[0] in report["content"], report  # the answer uses the result
    assert "⚙ secret_word" in result.stderr
