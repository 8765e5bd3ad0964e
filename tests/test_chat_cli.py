"""One-shot and pipe modes, config precedence, exit codes and one-line errors."""

from __future__ import annotations

import io
import json
import os
import pty
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from chat_cli.__main__ import main
from chat_cli.config import OPTIONS, build_parser, load_config
from chat_cli.errors import ConfigError
from tests.chat_support import (
    CHAT,
    XtermScreen,
    chat_env,
    closed_port_url,
    conversations,
    exit_status,
    fake_server,
    visible,
)
from tests.fake_openai import DEFAULT_ANSWER, FakeServer, tokens

PARTIAL = "".join(tokens(DEFAULT_ANSWER)[:3])


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server


@pytest.fixture
def env(tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = chat_env(tmp_path, fake.url)
    for key in ("VLLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    return values


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# -- config -------------------------------------------------------------------------------
def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    config_file = tmp_path / "config" / "mixvllm" / "chat.toml"
    config_file.parent.mkdir(parents=True)
    config_file.write_text('model = "from-file"\ntemperature = 0.3\nmax_tokens = 99\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "CHAT_TEMPERATURE": "0.5"}
    config = load_config(["--max-tokens", "7"], env)
    assert (config.model, config.temperature, config.max_tokens) == ("from-file", 0.5, 7)
    assert config.url == "http://localhost:8000/v1" and config.stream and not config.plain
    assert load_config([], {"VLLM_API_KEY": "a", "OPENAI_API_KEY": "b"}).api_key == "a"
    assert load_config([], {"OPENAI_API_KEY": "b"}).api_key == "b"
    assert not load_config([], {"CHAT_NO_STREAM": "1"}).stream
    config_file.write_text("no_stream = true\nplain = true\n")
    config = load_config([], {"XDG_CONFIG_HOME": str(tmp_path / "config")})
    assert (config.stream, config.plain) == (False, True)


def test_bad_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--temperature"):
        load_config([], {"CHAT_TEMPERATURE": "hot"})
    bad = tmp_path / "chat.toml"
    bad.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="unknown keys colour"):
        load_config(["--config", str(bad)], {})


def test_help_lists_every_flag_and_env_var() -> None:
    text = build_parser().format_help()
    for option in OPTIONS:
        for flag in option.flags:
            assert flag in text
        for name in option.envs:
            assert f"${name}" in text


# -- one-shot and pipe --------------------------------------------------------------------
def test_one_shot_prints_plain_text_when_not_a_terminal(
    env: dict[str, str], fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_main(["what", "is", "up?"], capsys)
    assert (code, out, err) == (0, DEFAULT_ANSWER, "")
    assert fake.state.requests[-1]["messages"] == [{"role": "user", "content": "what is up?"}]
    saved = json.loads(conversations(tmp_path)[0].read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]


def test_pipe_appends_stdin_and_system_prompt(
    env: dict[str, str],
    fake: FakeServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("line 1\nline 2\n"))
    code, _, _ = run_main(["--system", "be brief", "summarize"], capsys)
    assert code == 0
    assert fake.state.requests[-1]["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "summarize\n\nline 1\nline 2\n"},
    ]


def test_json_output(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--json", "hi"], capsys)
    data = json.loads(out)
    assert code == 0
    assert data["content"] == DEFAULT_ANSWER and data["model"] == "fake-model"
    assert data["usage"]["completion_tokens"] == len(tokens(DEFAULT_ANSWER))
    assert data["usage"]["estimated"] is True
    assert data["timings"]["ttft_s"] >= 0 and data["error"] is None


def test_mid_stream_fault_keeps_partial_and_exits_non_zero(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_main(["q @fault:cut"], capsys)
    assert code == 1
    assert out == PARTIAL + "\n[incomplete]\n"
    assert err.count("\n") == 1 and err.startswith("chat: the connection to the model server")
    saved = json.loads(conversations(tmp_path)[0].read_text())
    assert saved["messages"][-1] == {
        "role": "assistant",
        "content": PARTIAL,
        "incomplete": "incomplete",
        "reasoning": None,
    }


def test_unknown_model_lists_served(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(["--model", "nope", "hi"], capsys)
    assert (code, out) == (1, "")
    assert err == (
        "chat: model 'nope' is not served here (404); served models: fake-model, other-model\n"
    )


def test_model_from_config_file_and_completions_mode(
    env: dict[str, str], fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config_file = tmp_path / "config" / "mixvllm" / "chat.toml"
    config_file.parent.mkdir(parents=True)
    config_file.write_text('model = "other-model"\ncompletions = true\n')
    code, out, _ = run_main(["Once upon"], capsys)
    assert (code, out) == (0, DEFAULT_ANSWER)
    assert fake.state.requests[-1]["model"] == "other-model"
    assert fake.state.requests[-1]["prompt"] == "Once upon\n"


def test_fallback_url_when_primary_is_unreachable(
    env: dict[str, str],
    fake: FakeServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_SERVER_URL", closed_port_url())
    code, out, err = run_main(["--fallback-url", fake.url, "hi"], capsys)
    assert (code, out) == (0, DEFAULT_ANSWER)
    assert "is unreachable; using fallback" in err


def test_wait_for_a_loading_server(
    env: dict[str, str], fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.state.loading_until = time.monotonic() + 1.0
    code, out, err = run_main(["--wait", "30", "hi"], capsys)
    assert (code, out) == (0, DEFAULT_ANSWER)
    assert "waiting for" in err and "503" in err


def test_wait_progress_rewrites_one_row_of_a_narrow_terminal(
    spawn_chat: Callable[..., pexpect.spawn], tmp_path: Path, fake: FakeServer
) -> None:
    fake.state.loading_until = time.monotonic() + 2.5
    child = spawn_chat("--wait", "30", "hi", env=chat_env(tmp_path, fake.url), dimensions=(24, 50))
    screen = XtermScreen(50, 24)
    output = ""
    while True:
        try:
            data = child.read_nonblocking(65536, timeout=30)
        except pexpect.EOF:
            break
        output += data
        screen.feed(data)
        rows = [line for line in screen.transcript() if "waiting for" in line]
        assert len(rows) <= 1, rows
        assert all(len(row) < 50 for row in rows), rows
    assert visible(output).count("waiting for") >= 3, "the progress was shown, and updated"
    assert exit_status(child) == 0
    assert "Hello there!" in "\n".join(screen.transcript())


def test_resume_continues_the_last_conversation(
    env: dict[str, str], fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run_main(["first"], capsys)[0] == 0
    assert run_main(["--resume", "second"], capsys)[0] == 0
    sent = fake.state.requests[-1]["messages"]
    assert [m["content"] for m in sent] == ["first", DEFAULT_ANSWER, "second"]
    assert len(conversations(tmp_path)) == 1


# -- the real entry point: exit codes and one line, no traceback --------------------------
@pytest.mark.parametrize(
    ("args", "code", "starts"),
    [
        (["hi"], 1, "chat: cannot reach the model server at http://127.0.0.1:"),
        (["--wait", "1", "hi"], 1, "chat: model server at http://127.0.0.1:"),
        (["--temperature", "hot", "hi"], 2, "chat: invalid value 'hot' for --temperature"),
    ],
)
def test_errors_are_one_line_with_exit_code(
    tmp_path: Path, args: list[str], code: int, starts: str
) -> None:
    env = chat_env(tmp_path, closed_port_url())
    result = subprocess.run(
        CHAT + args,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == code
    lines = [line for line in result.stderr.splitlines() if not line.startswith("waiting")]
    assert len(lines) == 1 and lines[0].startswith(starts), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_entry_point_pipe_mode(tmp_path: Path, fake: FakeServer) -> None:
    result = subprocess.run(
        [*CHAT, "summarize"],
        env=chat_env(tmp_path, fake.url),
        input="some file text\n",
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, DEFAULT_ANSWER, "")
    assert fake.state.requests[-1]["messages"][-1]["content"] == "summarize\n\nsome file text\n"


def test_reader_going_away_is_not_an_error(tmp_path: Path) -> None:
    with fake_server(answer="line\n" * 50000) as server:
        result = subprocess.run(
            f"{shlex.join(CHAT)} hi | head -2; exit ${{PIPESTATUS[0]}}",
            shell=True,
            executable="/bin/bash",
            env=chat_env(tmp_path, server.url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert (result.returncode, result.stdout, result.stderr) == (0, "line\nline\n", "")


def test_interactive_mode_needs_a_terminal_for_its_output(tmp_path: Path, fake: FakeServer) -> None:
    master, slave = pty.openpty()
    try:
        result = subprocess.run(
            CHAT, stdin=slave, env=chat_env(tmp_path, fake.url), capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(slave)
        os.close(master)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("chat: nothing to ask: give a question (the interactive")
