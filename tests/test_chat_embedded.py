"""Happy paths against the REAL embedded model server (llama.cpp + SmolLM2), no fakes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.chat_support import CHAT, PROMPT_READY, ROOT, chat_env, exit_status, visible

pytestmark = pytest.mark.embedded


def run_chat(
    tmp_path: Path, server: Any, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = chat_env(tmp_path, server.base_url, VLLM_API_KEY=server.api_key)
    return subprocess.run(
        [*CHAT, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_one_shot_answer_from_the_real_model(tmp_path: Path, embedded_model_server: Any) -> None:
    result = run_chat(
        tmp_path, embedded_model_server, "--max-tokens", "24", "--seed", "1", "Say hello."
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stderr == ""
    assert "\x1b[" not in result.stdout  # plain text when stdout is not a terminal


def test_json_counts_tokens_from_the_real_stream(
    tmp_path: Path, embedded_model_server: Any
) -> None:
    result = run_chat(
        tmp_path, embedded_model_server, "--json", "--max-tokens", "16", "Name a colour."
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == embedded_model_server.model
    assert data["content"] and data["error"] is None
    assert 0 < data["usage"]["completion_tokens"] <= 16 + 1
    assert data["finish_reason"] in ("stop", "length")


def test_pipe_and_no_stream_and_completions(tmp_path: Path, embedded_model_server: Any) -> None:
    result = run_chat(
        tmp_path, embedded_model_server, "--no-stream", "--max-tokens", "16", "Summarize:",
        stdin="The cat sat on the mat. It was warm.\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    result = run_chat(
        tmp_path, embedded_model_server, "--completions", "--max-tokens", "8", "Once upon a time"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_wrong_key_gives_the_key_hint(tmp_path: Path, embedded_model_server: Any) -> None:
    env = chat_env(tmp_path, embedded_model_server.base_url, VLLM_API_KEY="wrong")
    result = subprocess.run(
        [*CHAT, "hi"], env=env, capture_output=True, text=True, timeout=60, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 1
    assert "rejected the API key (401)" in result.stderr and "Traceback" not in result.stderr


def test_repl_exchange_with_the_real_model(
    tmp_path: Path, embedded_model_server: Any, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    env = chat_env(
        tmp_path, embedded_model_server.base_url, VLLM_API_KEY=embedded_model_server.api_key
    )
    child = spawn_chat("--max-tokens", "32", env=env, timeout=60)
    child.expect(PROMPT_READY)
    assert f"model {embedded_model_server.model}" in visible(child.before)
    child.send("What is 2 + 2?\r")
    child.expect("tok/s")
    child.expect(PROMPT_READY)
    child.send("/model\r")
    child.expect_exact(f"* {embedded_model_server.model}")
    child.expect(PROMPT_READY)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0


def test_context_overflow_is_refused_before_sending(
    tmp_path: Path, embedded_model_server: Any
) -> None:
    # chat knows the context (llama.cpp's /props) and counts with the engine's tokenizer: a
    # question that cannot fit is not sent, and one line says what to do.
    result = run_chat(tmp_path, embedded_model_server, "--max-tokens", "4", "Summarize:",
                      stdin="word " * 9000)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("chat: not sent: it would not fit the model's context (about ")
    assert "the context holds 4,096" in result.stderr
    assert "shorten the input or lower --max-tokens" in result.stderr
    assert "/clear" not in result.stderr and result.stderr.count("\n") == 1


def test_an_answer_cut_by_max_tokens_says_so(tmp_path: Path, embedded_model_server: Any) -> None:
    result = run_chat(
        tmp_path, embedded_model_server, "--max-tokens", "3", "--seed", "1",
        "Tell me a long story about a lighthouse.",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n[cut short: the answer reached max_tokens]\n")


def test_no_stream_answer_longer_than_the_stall_timeout(
    tmp_path: Path, embedded_model_server: Any
) -> None:
    # The whole answer takes far longer than --timeout: that is no stall.
    result = run_chat(
        tmp_path, embedded_model_server, "--no-stream", "--timeout", "0.05", "--max-tokens",
        "48", "--json", "Count from one to twenty in words.",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["content"] and data["timings"]["total_s"] > 0.05


def test_a_new_shell_finds_the_launchers_local_key(
    tmp_path: Path, embedded_model_server: Any
) -> None:
    state = tmp_path / "launcher-state"
    state.mkdir()
    (state / "api-key").write_text(embedded_model_server.api_key + "\n")
    env = chat_env(tmp_path, embedded_model_server.base_url, MIXVLLM_STATE_DIR=str(state))
    result = subprocess.run(
        [*CHAT, "--max-tokens", "8", "hi"], env=env, capture_output=True, text=True,
        timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_a_forced_tool_the_engine_ignores_is_said_in_one_line(
    tmp_path: Path, embedded_model_server: Any
) -> None:
    """llama.cpp's server reads a named tool_choice as "auto" (and SmolLM2's template has no
    tool format to force): chat keeps the answer and says the tool was not called, instead
    of leaving the user to wonder. When the engine starts forcing tools, this fails: the
    round trip then belongs here (vLLM's is in tests/e2e/test_vllm_parity.py)."""
    server_cmd = f"demo={sys.executable} {ROOT / 'tests' / 'mcp_server.py'}"
    result = run_chat(
        tmp_path, embedded_model_server, "--mcp", server_cmd, "--tool-choice", "secret_word",
        "--yes", "--json", "--max-tokens", "40", "--seed", "1", "What is the secret word?",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["tool_calls"] == [] and data["error"] is None
    assert data["note"] == "secret_word was not called: the server ignored tool_choice secret_word"
    assert data["content"].strip()  # the answer is kept


def test_an_attached_text_file_reaches_the_real_model(
    tmp_path: Path, embedded_model_server: Any
) -> None:
    (tmp_path / "fact.txt").write_text("The secret colour is teal. " * 20 + "\n")
    prompt_tokens = []
    for attached in (["-a", str(tmp_path / "fact.txt")], []):
        result = run_chat(
            tmp_path, embedded_model_server, "--json", "--max-tokens", "8", "--seed", "1",
            *attached, "What is the secret colour in the file?",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["content"] and data["error"] is None
        prompt_tokens.append(data["usage"]["prompt_tokens"])
    # The server counted the file: 20 sentences of it.
    assert prompt_tokens[0] > prompt_tokens[1] + 100, prompt_tokens


def test_an_image_for_a_text_only_model_is_one_line(
    tmp_path: Path, embedded_model_server: Any
) -> None:
    # llama.cpp's server without a vision projector fails in its chat template (500); chat
    # says the image was refused, on one line, with no stack trace.
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    result = run_chat(
        tmp_path, embedded_model_server, "--max-tokens", "8", "-a", str(tmp_path / "cat.png"),
        "What is in this picture?",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("chat: the model server refused the image (500: ")
    assert f"{embedded_model_server.model} may not take images" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
