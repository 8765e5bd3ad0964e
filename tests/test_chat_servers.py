"""Several servers: `[servers.NAME]`, `--server`, keys from a variable or a command, `/server`,
and `/model` across servers with one of them down; real processes and sockets, fake servers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import psutil
import pytest

from chat_cli import chats
from chat_cli.api.client import ChatClient, Sampling
from chat_cli.commands import Commands
from chat_cli.config import load_config
from chat_cli.conversation import Conversation
from chat_cli.errors import ChatError, ConfigError
from chat_cli.servers import KeyUnavailable, Server, parse_table, read_key, run_key_command
from chat_cli.session import Session
from chat_cli.switching import Switcher
from tests.chat_support import (
    CHAT,
    PROMPT_READY,
    chat_env,
    closed_port_url,
    exit_status,
    fake_server,
    visible,
)
from tests.embedded_server import run_embedded
from tests.fake_openai import MODEL, FakeServer

KEY = "sk-spare-0123456789"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server


@pytest.fixture
def spare() -> Iterator[FakeServer]:
    with fake_server(models=["spare-model"], api_key=KEY) as server:
        yield server


def chat(
    tmp_path: Path, url: str, config: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "chat.toml"
    path.write_text(config)
    return subprocess.run(
        [*CHAT, *args], env=chat_env(tmp_path, url, CHAT_CONFIG=str(path), **env),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def spare_table(spare: FakeServer, key: str) -> str:
    return f'[servers.spare]\nurl = "{spare.url}"\n{key}\n'


# -- the config file ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"x": {"key": "k"}}, "[servers.x] needs a url"),
        ({"x": {"url": "ftp://h"}}, "[servers.x]: "),
        ({"x": {"url": "http://h", "key": "a", "key_env": "B"}}, "give one of key, key_env"),
        ({"x": {"url": "http://h", "colour": "red"}}, "unknown keys colour"),
        ({"x": {"url": "http://h", "key_command": ""}}, "key_command is empty"),
        ({"x": {"url": "http://h", "key_command": "pass 'open"}}, "[servers.x]: "),
        ({"x": {"url": 5}}, "are strings"),
        ({"default": {"url": "http://h"}}, "`default` is the server of --url"),
        ({"x": 5}, "[servers.x] must be a table"),
    ],
)
def test_a_wrong_server_table_is_one_line(table: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=r"^config file f: ") as caught:
        parse_table(table, "config file f")
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_servers_parse_and_the_default_stays_model_server_url(tmp_path: Path) -> None:
    path = tmp_path / "chat.toml"
    path.write_text('[servers.big]\nurl = "http://gpu:8000"\nkey_command = "pass show big"\n')
    config = load_config(["--config", str(path)], {"MODEL_SERVER_URL": "http://here:1"})
    assert config.server == "default" and config.url == "http://here:1/v1"
    assert config.servers["big"] == Server(
        "big", "http://gpu:8000/v1", key_command=("pass", "show", "big")
    )
    assert "key" not in repr(Server("x", "http://h/v1", key="sk-secret")).replace("key_", "")
    with pytest.raises(ConfigError, match=r"^unknown server 'bog' \(--server\); known servers: "
                                          r"default, big$"):  # fmt: skip
        load_config(["--config", str(path), "--server", "bog"], {})


def test_an_unknown_server_is_one_line_listing_the_known_ones(
    tmp_path: Path, spare: FakeServer
) -> None:
    result = chat(tmp_path, closed_port_url(), spare_table(spare, ""), "--server", "sapre", "hi")
    assert result.returncode == 2
    assert result.stderr == (
        "chat: unknown server 'sapre' (--server); known servers: default, spare\n"
    )


# -- --server and its key ------------------------------------------------------------------
def test_server_flag_talks_to_that_server_with_its_key_from_a_variable(
    tmp_path: Path, fake: FakeServer, spare: FakeServer
) -> None:
    config = spare_table(spare, 'key_env = "SPARE_KEY"')
    result = chat(tmp_path, fake.url, config, "--server", "spare", "hi", SPARE_KEY=KEY)
    assert result.returncode == 0, result.stderr
    assert len(spare.state.requests) == 1 and not fake.state.requests
    assert spare.state.requests[0]["model"] == "spare-model"
    (row,) = json.loads(chat(tmp_path, fake.url, config, "logs", "--json").stdout)
    assert row["server"] == spare.url + "/v1" and row["sampling"]["server_name"] == "spare"
    missing = chat(tmp_path, fake.url, config, "--server", "spare", "hi")
    assert missing.returncode == 1
    assert missing.stderr == "chat: server 'spare': its key variable $SPARE_KEY is not set\n"


def test_a_named_server_on_this_machine_gets_the_local_key(
    tmp_path: Path, fake: FakeServer, spare: FakeServer
) -> None:
    state = tmp_path / "state" / "mixvllm"
    state.mkdir(parents=True)
    (state / "api-key").write_text(KEY + "\n")
    config = spare_table(spare, "")
    result = chat(tmp_path, closed_port_url(), config, "--server", "spare", "hi")
    assert result.returncode == 0, result.stderr
    assert spare.state.requests


def test_a_key_from_a_command_is_used_and_written_nowhere(
    tmp_path: Path, spare: FakeServer
) -> None:
    command = f"{sys.executable} -c 'print(\"{KEY}\")'"
    config = spare_table(spare, f"key_command = '''{command}'''")
    result = chat(tmp_path, closed_port_url(), config, "--server", "spare", "--debug", "hi")
    assert result.returncode == 0, result.stderr
    assert KEY not in result.stdout + result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "chat.toml"]
    assert any(p.name == "history.db" for p in written)
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path


def test_a_failing_key_command_is_one_line_that_shows_none_of_its_output(
    tmp_path: Path, spare: FakeServer
) -> None:
    script = "echo sk-leaked-on-stderr >&2; echo sk-leaked-on-stdout; exit 3"
    config = spare_table(spare, f"key_command = \"sh -c '{script}'\"")
    result = chat(tmp_path, closed_port_url(), config, "--server", "spare", "hi")
    assert result.returncode == 1
    assert result.stderr == (
        "chat: server 'spare': key command 'sh' failed (exit status 3; its output is not shown)\n"
    )
    assert "leaked" not in result.stdout and not spare.state.requests


def test_a_hanging_key_command_is_stopped_with_its_children_in_bounded_time(
    tmp_path: Path,
) -> None:
    marker = f"roles22-hang-{os.getpid()}"
    # The child it leaves behind holds the pipe open: only stopping the group ends the wait.
    sleeper = f"import time; time.sleep(30)  # {marker}"
    spawn = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {sleeper!r}])"
    argv = (sys.executable, "-c", f"{spawn}; {sleeper}")
    started = time.monotonic()
    said = r"^server 'x': key command 'python3?[.0-9]*' gave no key within 1.5 s; it was stopped$"
    with pytest.raises(KeyUnavailable, match=said):
        run_key_command("x", argv, timeout=1.5)
    assert time.monotonic() - started < 5
    left = [
        p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])
    ]
    assert not left


@pytest.mark.parametrize("key", ["sk-one two", "sk-\x1b[31m", "sk-é"])
def test_a_key_no_header_can_carry_is_one_line_that_does_not_show_it(key: str) -> None:
    server = Server("x", "http://gpu:8000/v1", key_env="K")
    with pytest.raises(KeyUnavailable) as caught:
        read_key(server, {"K": key})
    assert str(caught.value) == (
        "server 'x': its key holds a space, a control or a non-ASCII character (it is not shown)"
    )
    assert read_key(server, {"K": " sk-fine\n"}) == "sk-fine"


def test_a_key_command_that_floods_its_output_is_stopped() -> None:
    with pytest.raises(KeyUnavailable, match="printed over 16 KiB; it was stopped"):
        run_key_command("x", ("yes", "sk-long"))
    with pytest.raises(KeyUnavailable, match=r"key command 'true' printed no key$"):
        run_key_command("x", ("true",))
    with pytest.raises(KeyUnavailable, match=r"key command 'no-such-tool-22' cannot start"):
        run_key_command("x", ("no-such-tool-22",))
    assert run_key_command("x", ("printf", "  sk-1 \nsecond line\n")) == "sk-1"


# -- /server and /model in process ---------------------------------------------------------
@pytest.fixture
def commands(
    fake: FakeServer, spare: FakeServer, tmp_path: Path
) -> Iterator[tuple[Session, Commands, io.StringIO]]:
    conversation = Conversation(path=chats.new_autosave_path(tmp_path / "conversations"))
    session = Session(ChatClient(fake.url + "/v1", None, 10.0), conversation, Sampling(MODEL))
    servers = {
        "default": Server("default", fake.url + "/v1"),
        "spare": Server("spare", spare.url + "/v1", key_env="SPARE_KEY"),
        "down": Server("down", closed_port_url() + "/v1"),
    }
    switcher = Switcher(
        session, roles={}, servers=servers, base={"model": None}, env={"SPARE_KEY": KEY}
    )
    out = io.StringIO()
    yield session, Commands(session, out, tmp_path / "conversations", switcher=switcher), out
    session.client.close()


def test_model_lists_every_server_and_marks_the_one_that_is_down(
    commands: tuple[Session, Commands, io.StringIO], fake: FakeServer, spare: FakeServer
) -> None:
    _, cmds, out = commands
    started = time.monotonic()
    cmds.run("/model")
    assert time.monotonic() - started < 5
    lines = out.getvalue().splitlines()
    assert lines[0] == f"  default ({fake.url}/v1) · current"
    assert lines[1:3] == [f"   * {MODEL}", "     other-model"]
    assert lines[3:5] == [f"  spare ({spare.url}/v1)", "     spare-model"]
    assert lines[5].startswith("  down (http://127.0.0.1:")
    assert lines[6].startswith("     unreachable: cannot reach the model server at ")
    assert len(lines) == 7


def test_model_on_another_server_switches_to_it_and_server_switches_back(
    commands: tuple[Session, Commands, io.StringIO], fake: FakeServer, spare: FakeServer
) -> None:
    session, cmds, out = commands
    cmds.run("/model spare-model")
    assert session.server == "spare" and session.sampling.model == "spare-model"
    assert session.client.base_url == spare.url + "/v1" and session.client.api_key == KEY
    cmds.run("/server default")
    assert session.server == "default" and session.sampling.model == MODEL
    started = time.monotonic()
    cmds.run("/model other-model")  # served here: answered without asking the others
    assert time.monotonic() - started < 1 and session.sampling.model == "other-model"
    assert out.getvalue().splitlines()[-1] == "Model: other-model"
    cmds.run("/server")
    assert f" * default      {fake.url}/v1" in out.getvalue()
    assert "Model: spare-model · server spare" in out.getvalue()
    with pytest.raises(ChatError, match=r"^unknown server 'nope'; known servers: default, spare"):
        cmds.run("/server nope")
    with pytest.raises(ChatError, match=r"^cannot reach the model server at "):
        cmds.run("/server down")
    assert session.server == "default"  # a server that is down is not switched to
    with pytest.raises(ChatError, match="'gone' is not served by any server"):
        cmds.run("/model gone")


# -- the REPL on a real PTY ----------------------------------------------------------------
def test_role_and_server_switch_in_the_repl(
    tmp_path: Path,
    fake: FakeServer,
    spare: FakeServer,
    spawn_chat: Callable[..., pexpect.spawn],
) -> None:
    config = tmp_path / "chat.toml"
    role = '[roles.pirate]\nsystem = "You are a pirate."\ntemperature = 0.7\n'
    config.write_text(role + spare_table(spare, 'key_env = "SPARE_KEY"'))
    env = chat_env(tmp_path, fake.url, CHAT_CONFIG=str(config), SPARE_KEY=KEY)
    child = spawn_chat(env=env)
    child.expect(PROMPT_READY)
    assert f"Connected to {fake.url}/v1 · server default · model {MODEL}" in visible(child.before)

    def command(line: str, *shown: str) -> str:
        child.send(line + "\r")
        for text in shown:
            child.expect_exact(text)
        child.expect(PROMPT_READY)
        return visible(child.before)

    command("/roles", "pirate", "(chat.toml)", "shell")
    command("/role pirate", "Role: pirate · model fake-model · temperature 0.7")
    command("ahoy", "tok/s")
    request = fake.state.requests[-1]
    assert request["messages"][0] == {"role": "system", "content": "You are a pirate."}
    assert request["temperature"] == 0.7
    command("/server spare", f"Server: spare ({spare.url}/v1) · model spare-model")
    command("hello spare", "tok/s")
    (request,) = spare.state.requests
    assert request["model"] == "spare-model" and request["temperature"] == 0.7
    assert request["messages"][0]["content"] == "You are a pirate."
    assert [m["content"] for m in request["messages"] if m["role"] == "user"] == [
        "ahoy",
        "hello spare",
    ]  # the conversation goes on, on the other server
    command("/model", f"default ({fake.url}/v1)", "other-model", "current", "* spare-model")
    command("/role nope", "unknown role 'nope'; known roles: explain, pirate, review, shell")
    command("/server nope", "unknown server 'nope'; known servers: default, spare")
    command("/role -", "Role dropped")
    command("after", "tok/s")
    assert spare.state.requests[-1]["messages"][0]["role"] == "user"  # no system prompt now
    assert "temperature" not in spare.state.requests[-1]
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0


# -- the happy path on two real servers ----------------------------------------------------
@pytest.mark.embedded
def test_two_real_servers_a_role_and_models_across_both(
    tmp_path: Path, embedded_model_server: Any, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    first = embedded_model_server
    with run_embedded(tmp_path / "second") as second:
        config = tmp_path / "chat.toml"
        config.write_text(f'[servers.second]\nurl = "{second.base_url}"\nkey_env = "TWO"\n')
        env = chat_env(
            tmp_path, first.base_url, VLLM_API_KEY=first.api_key, TWO=second.api_key,
            CHAT_CONFIG=str(config),
        )  # fmt: skip
        error = "ls: cannot access 'x': No such file or directory\n"
        args = ["--server", "second", "-r", "explain", "--max-tokens", "16", "--seed", "1"]
        result = subprocess.run(
            [*CHAT, *args], env=env, input=error, capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() and result.stderr == ""
        logged = subprocess.run(
            [*CHAT, "logs", "--json"], env=env, capture_output=True, text=True, timeout=60,
            check=True,
        )  # fmt: skip
        (row,) = json.loads(logged.stdout)
        assert row["server"] == second.base_url and row["question"].endswith(error)
        assert row["sampling"]["role"] == "explain" and row["sampling"]["server_name"] == "second"

        child = spawn_chat("--max-tokens", "16", env=env, timeout=90)
        child.expect(PROMPT_READY)
        child.send("/model\r")
        child.expect_exact(f"default ({first.base_url}) · current")
        child.expect_exact(f"* {first.model}")
        child.expect_exact(f"second ({second.base_url})")
        child.expect_exact(first.model)
        child.expect(PROMPT_READY)
        child.send("/server second\r")
        child.expect_exact(f"Server: second ({second.base_url})")
        child.expect(PROMPT_READY)
        child.send("/role shell\r")
        child.expect_exact("Role: shell")
        child.expect(PROMPT_READY)
        child.send("How do I list files?\r")
        child.expect("tok/s")
        child.expect(PROMPT_READY)
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
        assert exit_status(child) == 0
