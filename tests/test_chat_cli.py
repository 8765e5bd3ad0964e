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
from chat_cli.conversation import Conversation, Message
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


def test_config_file_mistakes_are_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=f"config file {missing} does not exist"):
        load_config(["--config", str(missing)], {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([], {"CHAT_CONFIG": str(missing)})
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('system = "réponds en français"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"cannot read config file {latin1}: not UTF-8 text"):
        load_config(["--config", str(latin1)], {})
    fractional = tmp_path / "fractional.toml"
    fractional.write_text("max_tokens = 1.7\n")
    with pytest.raises(ConfigError, match=r"max_tokens in .*: needs a whole number >= 1"):
        load_config(["--config", str(fractional)], {})
    with pytest.raises(ConfigError, match=r"--top-p.*needs a number from 0 to 1"):
        load_config(["--top-p", "1.5"], {})


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
    assert conversations(tmp_path) == []  # one-shots are saved only with --resume
    assert run_main(["and then?", "--resume"], capsys)[:2] == (0, DEFAULT_ANSWER)
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
    code, out, err = run_main(["q @fault:cut", "--resume"], capsys)
    assert code == 1
    assert out == PARTIAL + "\n[incomplete]\n"
    assert err.splitlines()[-1] == (
        "chat: the connection to the model server was cut mid-answer; the answer is incomplete"
    )
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
    assert run_main(["first", "--resume"], capsys)[0] == 0
    assert run_main(["second", "--resume"], capsys)[0] == 0
    sent = fake.state.requests[-1]["messages"]
    assert [m["content"] for m in sent] == ["first", DEFAULT_ANSWER, "second"]
    assert len(conversations(tmp_path)) == 1


def test_resume_with_a_question_that_is_no_name_continues_the_last_chat(
    env: dict[str, str], fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run_main(["first", "--resume"], capsys)[0] == 0
    code, out, err = run_main(["--resume", "and then?"], capsys)
    assert (code, err) == (0, "")
    sent = fake.state.requests[-1]["messages"]
    assert [m["content"] for m in sent] == ["first", DEFAULT_ANSWER, "and then?"]
    code, out, err = run_main(["--resume", "trip"], capsys)  # a name: that chat, or one line
    assert (code, out) == (2, "")
    assert err.startswith("chat: no saved conversation named 'trip' in ")


def test_a_url_of_another_scheme_is_one_line(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_main(["--url", "htp://x", "hi"], capsys)
    assert (code, out) == (2, "")
    assert err == (
        "chat: invalid value 'htp://x' for --url: the scheme htp:// is not http:// or https://\n"
    )
    monkeypatch.setenv("CHAT_FALLBACK_URL", "ws://y")
    code, _, err = run_main(["hi"], capsys)
    assert code == 2 and "$CHAT_FALLBACK_URL: the scheme ws:// is not" in err


def test_resume_picks_the_last_chat_not_a_one_shot(
    env: dict[str, str], fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "data" / "mixvllm" / "conversations"
    older = Conversation(path=folder / "20240101-000000-aaaaaa.json")
    older.messages += [Message("user", "repl question"), Message("assistant", "repl answer")]
    older.autosave()
    assert run_main(["a one-shot question"], capsys)[0] == 0
    broken = folder / "20240102-000000-bbbbbb.json"
    broken.write_text("{not json")  # newest, unreadable: skipped with a warning
    code, _, err = run_main(["follow-up", "--resume"], capsys)
    assert code == 0
    assert err == f"chat: {broken} is not a saved chat (JSON from /save or autosave); skipped it\n"
    sent = [m["content"] for m in fake.state.requests[-1]["messages"]]
    assert sent == ["repl question", "repl answer", "follow-up"]


def test_resume_by_name(
    env: dict[str, str], fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "data" / "mixvllm" / "conversations"
    named = Conversation(path=folder / "trip.json", messages=[Message("user", "plan it")])
    named.autosave()
    Conversation(
        path=folder / "20990101-000000-cccccc.json", messages=[Message("user", "x")]
    ).autosave()
    assert run_main(["--resume", "trip", "next?"], capsys)[0] == 0
    assert [m["content"] for m in fake.state.requests[-1]["messages"]] == ["plan it", "next?"]
    assert len(json.loads((folder / "trip.json").read_text())["messages"]) == 3
    code, out, err = run_main(["--resume", "what", "is", "up"], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("chat: no saved conversation named 'what' in ")
    assert err.endswith("write: chat QUESTION --resume\n")


@pytest.mark.parametrize(
    ("question", "line"),
    [
        ("q @fault:http500", "the model server failed (500 Internal Server Error: engine crashed"),
        ("q @fault:http400ctx", "shorten the input or lower --max-tokens"),
        ("q @fault:stall_empty", "(stall timeout); no answer text arrived"),
    ],
)
def test_one_shot_errors_name_no_repl_commands(
    env: dict[str, str],
    fake: FakeServer,
    capsys: pytest.CaptureFixture[str],
    question: str,
    line: str,
) -> None:
    code, out, err = run_main(["--timeout", "0.5", question], capsys)
    assert (code, out) == (1, "")
    assert line in err and err.count("\n") == 1
    assert "/retry" not in err and "/clear" not in err
    code, out, _ = run_main(["--json", "--timeout", "0.5", question], capsys)
    fake.state.release.set()  # the hung answers can end
    assert code == 1 and line in json.loads(out)["error"] and "try /" not in out


# -- the real entry point: exit codes and one line, no traceback --------------------------
@pytest.mark.parametrize(
    ("args", "code", "starts"),
    [
        (["hi"], 1, "chat: cannot reach the model server at http://127.0.0.1:"),
        (["--wait", "1", "hi"], 1, "chat: model server at http://127.0.0.1:"),
        (["--temperature", "hot", "hi"], 2, "chat: invalid value 'hot' for --temperature"),
        (["--config", "/nonexistent/chat.toml", "hi"], 2, "chat: config file /nonexistent/"),
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


# -- what a one-shot says when nothing was answered (issue 10, items 2 and 3) -------------
def test_one_shot_empty_answer_is_one_line_and_exit_1(
    env: dict[str, str], fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.state.raw_sse = (
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    code, out, err = run_main(["hi"], capsys)
    assert (code, out) == (1, "")
    assert err == "chat: the model gave an empty answer (finish_reason: stop)\n"
    code, out, _ = run_main(["--json", "hi"], capsys)
    assert code == 1 and json.loads(out)["error"].startswith("the model gave an empty answer")


def test_one_shot_answer_cut_by_max_tokens_says_so(
    env: dict[str, str], fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.state.raw_sse = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Once"}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
    )
    code, out, err = run_main(["a story"], capsys)
    assert (code, out, err) == (0, "Once\n[cut short: the answer reached max_tokens]\n", "")


def run_bytes(tmp_path: Path, url: str, args: list[bytes], stdin: bytes) -> tuple[int, str]:
    result = subprocess.run(
        [*(a.encode() for a in CHAT), *args], env=chat_env(tmp_path, url), input=stdin,
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    return result.returncode, result.stderr.decode()


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        ([b"summarize"], b"caf\xe9 latin-1\n", "chat: stdin is not UTF-8 text\n"),
        ([b"caf\xe9"], b"", "chat: the question on the command line is not UTF-8 text\n"),
    ],
)
def test_input_that_is_not_utf8_is_named_and_nothing_is_saved(
    tmp_path: Path, fake: FakeServer, args: list[bytes], stdin: bytes, expected: str
) -> None:
    code, err = run_bytes(tmp_path, fake.url, args, stdin)
    assert (code, err) == (1, expected)
    assert fake.state.requests == []
    data = tmp_path / "data"
    assert not data.exists() or [p for p in data.rglob("*") if p.is_file()] == []


def test_a_failed_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    conversation = Conversation(messages=[Message("user", "bad \udcff")])
    with pytest.raises(UnicodeEncodeError):
        conversation.save(tmp_path / "chat.json")
    assert list(tmp_path.iterdir()) == []


# -- the launcher's local key (item 5) and the deadline option (item 4) -------------------
def test_the_launchers_local_key_is_used_for_a_local_server(tmp_path: Path) -> None:
    with fake_server(api_key="local-sekrit") as server:
        env = chat_env(tmp_path, server.url)
        key_file = tmp_path / "state" / "mixvllm" / "api-key"
        key_file.parent.mkdir(parents=True)
        key_file.write_text("local-sekrit\n")
        result = subprocess.run(
            [*CHAT, "hi"], env=env, capture_output=True, text=True, timeout=60, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert (result.returncode, result.stdout, result.stderr) == (0, DEFAULT_ANSWER, "")
        key_file.write_text("stale\n")
        result = subprocess.run(
            [*CHAT, "hi"], env=env, capture_output=True, text=True, timeout=60, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert result.returncode == 1
    assert "rejected the API key (401)" in result.stderr
    assert "`export VLLM_API_KEY=$(mixvllm-serve key)`" in result.stderr


def test_the_local_key_goes_only_to_a_local_server(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "mixvllm").mkdir(parents=True)
    (state / "mixvllm" / "api-key").write_text("local\n")
    env = {"XDG_STATE_HOME": str(state), "HOME": str(tmp_path)}
    assert load_config([], {**env, "MODEL_SERVER_URL": "localhost:8000"}).api_key == "local"
    remote = {**env, "MODEL_SERVER_URL": "http://gpu-box:8000"}
    assert load_config([], remote).api_key is None
    assert load_config([], {**env, "VLLM_API_KEY": "mine"}).api_key == "mine"
    custom = {"MIXVLLM_STATE_DIR": str(state / "mixvllm"), "HOME": str(tmp_path)}
    assert load_config([], custom).api_key == "local"


def test_deadline_option(tmp_path: Path) -> None:
    assert load_config([], {}).deadline == 600.0
    assert load_config(["--deadline", "30"], {}).deadline == 30.0
    assert load_config([], {"CHAT_DEADLINE": "45"}).deadline == 45.0
    with pytest.raises(ConfigError, match="--deadline"):
        load_config(["--deadline", "0"], {})
