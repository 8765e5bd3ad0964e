"""Tool calls: the fault server streams `tool_calls` (split, parallel, malformed), a real MCP
server of the tests' own (tests/mcp_server.py, over stdio and streamable HTTP) runs them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from chat_cli import conversation as conv_mod
from chat_cli.api.client import ChatClient, Sampling
from chat_cli.commands import Commands
from chat_cli.config import load_config
from chat_cli.conversation import Conversation
from chat_cli.errors import ChatError, ConfigError
from chat_cli.session import ROUND_LIMIT, Session
from chat_cli.tools.loop import ToolView
from chat_cli.tools.mcp_client import McpHub
from chat_cli.tools.mcp_config import ServerSpec, parse_flag
from chat_cli.tools.toolbox import RESULT_LIMIT, Toolbox
from tests.chat_support import CHAT, PROMPT_READY, ROOT, chat_env, fake_server, visible
from tests.docs_support import code_blocks, section
from tests.fake_openai import MODEL, FakeServer
from tests.mcp_server import SECRET
from tests.support import free_port, wait_for
from tests.test_chat_client import Collect

SERVER = ServerSpec("t", command=sys.executable, args=(str(ROOT / "tests" / "mcp_server.py"),))
MCP_FLAG = f"t={sys.executable} {ROOT / 'tests' / 'mcp_server.py'}"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server


@pytest.fixture(scope="module")
def hub() -> Iterator[McpHub]:
    reported: list[str] = []
    running = McpHub([SERVER], reported.append)
    running.start()
    assert reported == []
    yield running
    running.close()


class Setup:
    def __init__(self, fake: FakeServer, hub: McpHub, **toolbox: object) -> None:
        self.client = ChatClient(fake.url + "/v1", None, 10.0)
        self.shown = io.StringIO()
        self.session = Session(
            self.client,
            Conversation(),
            Sampling(MODEL),
            tools=Toolbox(hub, **{"yes": True, **toolbox}),  # type: ignore[arg-type]
            tool_view=ToolView(self.shown, None, styled=False),
        )

    def ask(self, text: str) -> str:
        return self.session.ask(text, Collect()).text


@pytest.fixture
def setup(fake: FakeServer, hub: McpHub) -> Iterator[Setup]:
    made = Setup(fake, hub)
    yield made
    made.client.close()


@pytest.mark.parametrize("stream", [True, False])
def test_parallel_calls_streamed_in_pieces_run_and_the_model_is_asked_again(
    fake: FakeServer, setup: Setup, stream: bool
) -> None:
    setup.session.stream = stream
    answer = setup.ask('@fault:call echo {"text": "hello world"} | add {"a": 2, "b": 40}')
    assert answer == "tool said: hello world / 42"
    first, second = fake.state.requests
    assert first["tool_choice"] == "auto"
    assert {t["function"]["name"] for t in first["tools"]} >= {"echo", "add", "secret_word"}
    echo = next(t for t in first["tools"] if t["function"]["name"] == "echo")
    assert echo["function"]["parameters"]["properties"]["text"]["type"] == "string"
    _, called, result_1, result_2 = second["messages"]
    assert called["role"] == "assistant" and called["content"] == ""
    calls = called["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["echo", "add"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"text": "hello world"}
    assert json.loads(calls[1]["function"]["arguments"]) == {"a": 2, "b": 40}
    assert result_1 == {"role": "tool", "tool_call_id": calls[0]["id"], "content": "hello world"}
    assert result_2 == {"role": "tool", "tool_call_id": calls[1]["id"], "content": "42"}
    shown = setup.shown.getvalue()
    assert '⚙ echo {"text": "hello world"}' in shown and "│ 42" in shown
    roles = [m.role for m in setup.session.conversation.messages]
    assert roles == ["user", "assistant", "tool", "tool", "assistant"]


@pytest.mark.parametrize(
    ("call", "sent_back"),
    [
        ('echo {"text": "no end', "error: the arguments are not valid JSON"),
        ('add "Paris"', "error: the arguments must be a JSON object"),
        ("nope {}", "error: unknown tool 'nope' (the tools are: echo, add"),
        ('fail {"reason": "boom"}', "error: Error executing tool fail"),
        ('slow {"seconds": 5}', "error: slow timed out after 0.5 s"),
    ],
)
def test_a_bad_call_goes_back_to_the_model_as_an_error_on_one_line(
    fake: FakeServer, setup: Setup, call: str, sent_back: str
) -> None:
    assert setup.session.tools is not None
    setup.session.tools.timeout = 0.5 if call.startswith("slow") else 30.0
    answer = setup.ask(f"@fault:call {call}")
    assert answer.startswith(f"tool said: {sent_back}"), answer
    errors = [line for line in setup.shown.getvalue().splitlines() if "✗" in line]
    assert len(errors) == 1 and sent_back.removeprefix("error: ") in errors[0]
    assert setup.ask("and now?") == "Hello **there**! This is a test answer.\n\n- one\n- two\n"


def test_a_tool_without_parameters_ignores_what_a_small_model_sends(setup: Setup) -> None:
    assert setup.ask('@fault:call secret_word "secret_word"') == (
        f"tool said: The secret word is {SECRET}."
    )


def test_a_huge_result_is_truncated_with_a_note_and_shown_collapsed(
    fake: FakeServer, setup: Setup
) -> None:
    setup.ask('@fault:call big {"lines": 1000}')
    sent = fake.state.requests[-1]["messages"][-1]["content"]
    assert len(sent) < RESULT_LIMIT + 200
    assert sent.endswith("characters not shown]") and "truncated by chat" in sent
    shown = setup.shown.getvalue().splitlines()
    assert len(shown) == 5  # the call, three lines, the size
    assert "1000 lines" in shown[-1] and "/last-tool" in shown[-1]
    out = io.StringIO()
    Commands(setup.session, out, Path("/nonexistent")).run("/last-tool")
    assert out.getvalue().count("\n") == 1000


def test_the_round_limit_ends_with_one_line_and_a_usable_conversation(
    fake: FakeServer, setup: Setup
) -> None:
    assert setup.session.tools is not None
    setup.session.tools.max_rounds = 2
    with pytest.raises(ChatError, match=r"^stopped: the model still called tools after 2 rounds"):
        setup.ask('@fault:loop echo {"text": "again"}')
    assert len(fake.state.requests) == 3
    assert setup.session.last_note == ROUND_LIMIT
    setup.session.tools.max_rounds = 1
    with pytest.raises(ChatError, match=r"^stopped: the model still called tools after 1 round "):
        setup.ask('@fault:loop echo {"text": "again"}')
    last = setup.session.conversation.messages[-1]
    assert last.role == "tool" and "not run" in last.content
    setup.ask("hello")  # every call of the conversation has its answer: the server takes it
    assert fake.state.requests[-1]["messages"][-2]["role"] == "tool"


def test_a_forced_choice_holds_for_the_first_round_only(fake: FakeServer, setup: Setup) -> None:
    assert setup.session.tools is not None
    setup.session.tools.choice = "echo"
    setup.ask('@fault:call echo {"text": "x"}')
    first, second = fake.state.requests
    assert first["tool_choice"] == {"type": "function", "function": {"name": "echo"}}
    assert second["tool_choice"] == "auto"
    assert setup.session.notice is None  # the forced tool was called
    with pytest.raises(ValueError, match="needs auto, required, none or a tool's name"):
        setup.session.tools.set_choice("nope")


@pytest.mark.parametrize(
    ("choice", "notice"),
    [
        ("echo", "echo was not called: the server ignored tool_choice echo"),
        ("required", "no tool was called: the server ignored tool_choice required"),
        ("auto", None),
    ],
)
def test_a_forced_choice_the_server_ignores_is_a_note(
    fake: FakeServer, setup: Setup, choice: str, notice: str | None
) -> None:
    # llama.cpp's server reads a named choice as "auto": the answer is text, kept as it is.
    assert setup.session.tools is not None
    setup.session.tools.choice = choice
    answer = setup.ask("hello")
    assert answer and setup.session.notice == notice
    assert setup.session.conversation.messages[-1].content == answer
    setup.ask("again")  # the next question starts without the last one's note
    assert setup.session.notice == notice
    setup.session.tools.choice = "auto"
    setup.ask("and again")
    assert setup.session.notice is None


def test_tools_command_lists_and_turns_tools_off(fake: FakeServer, setup: Setup) -> None:
    out = io.StringIO()
    commands = Commands(setup.session, out, Path("/nonexistent"))
    commands.run("/mcp")
    listing = out.getvalue()
    assert "t: ready · " in listing and "✓ echo" in listing and "Return the text" in listing
    commands.run("/tools off echo")
    setup.ask("hi")
    assert "echo" not in {t["function"]["name"] for t in fake.state.requests[-1]["tools"]}
    commands.run("/tools off t")
    setup.ask("hi")
    assert "tools" not in fake.state.requests[-1]
    commands.run("/tools on t")
    commands.run("/tools on echo")
    commands.run("/tools choice required")
    setup.ask("hi")
    assert fake.state.requests[-1]["tool_choice"] == "required"
    assert "echo" in {t["function"]["name"] for t in fake.state.requests[-1]["tools"]}
    with pytest.raises(ChatError, match="no server or tool named 'x'"):
        commands.run("/tools off x")


def test_tool_calls_are_saved_loaded_and_undone(tmp_path: Path, setup: Setup) -> None:
    setup.ask('@fault:call echo {"text": "kept"}')
    conversation = setup.session.conversation
    conversation.save(tmp_path / "c.json")
    conversation.save(tmp_path / "c.md")
    loaded = conv_mod.load(tmp_path / "c.json")
    assert loaded.api_messages() == conversation.api_messages()
    markdown = (tmp_path / "c.md").read_text()
    assert "**Tool call** `echo`" in markdown and "## Tool result (echo)" in markdown
    assert conversation.undo() == 4 and conversation.messages == []


def test_a_server_that_fails_to_start_is_one_line_and_chat_goes_on(
    fake: FakeServer, tmp_path: Path
) -> None:
    bad = tmp_path / "bad_server.py"
    bad.write_text("import sys\nsys.exit('no config for this server')\n")
    result = run_chat(fake, tmp_path, "--mcp", f"bad={sys.executable} {bad}", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Hello")
    [line] = result.stderr.splitlines()
    assert "MCP server bad failed to start (no config for this server)" in line
    assert "tools" not in fake.state.requests[-1]


def test_a_server_that_dies_is_one_line_and_its_tools_fail(fake: FakeServer) -> None:
    reported: list[str] = []
    hub = McpHub([SERVER], reported.append)
    made = Setup(fake, hub)
    try:
        made.ask('@fault:call crash {} | echo {"text": "after"}')
        assert reported == ["MCP server t stopped (crashed on purpose); going on without its tools"]
        said = fake.state.requests[-1]["messages"]
        assert said[-2]["content"].startswith("error: MCP error")
        assert said[-1]["content"].startswith("error: MCP server t is down (crashed on purpose)")
        assert "tools" not in fake.state.requests[-1]  # its tools are gone
    finally:
        made.client.close()
        hub.close()


def test_a_streamable_http_server_by_url(fake: FakeServer) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "mcp_server.py"), "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    hub = McpHub([parse_flag(f"web=http://127.0.0.1:{port}/mcp")], print)
    made = Setup(fake, hub)
    try:
        wait_for(lambda: _listening(port), 20, "the MCP server to listen")
        assert made.ask('@fault:call add {"a": 1, "b": 2}') == "tool said: 3"
    finally:
        made.client.close()
        hub.close()
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


# -- the CLI ------------------------------------------------------------------------------
def run_chat(fake: FakeServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHAT, "--plain", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=chat_env(tmp_path, fake.url),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_without_a_terminal_a_call_is_refused_unless_yes(fake: FakeServer, tmp_path: Path) -> None:
    refused = run_chat(fake, tmp_path, "--mcp", MCP_FLAG, '@fault:call echo {"text": "x"}')
    assert refused.returncode == 0, refused.stderr
    assert "did not allow this call" in refused.stdout
    errors = [line for line in refused.stderr.splitlines() if "✗" in line]
    assert errors == [
        "  ✗ echo: the user did not allow this call: no terminal to confirm it on "
        "(--yes allows tool calls)"
    ]
    allowed = run_chat(fake, tmp_path, "--mcp", MCP_FLAG, "--yes", '@fault:call echo {"text": "x"}')
    assert allowed.stdout == "tool said: x\n"


def test_json_reports_the_calls(fake: FakeServer, tmp_path: Path) -> None:
    result = run_chat(
        fake, tmp_path, "--json", "--yes", "--mcp", MCP_FLAG, '@fault:call add {"a": 1, "b": 1}'
    )
    report = json.loads(result.stdout)
    assert report["content"] == "tool said: 2"
    assert report["tool_calls"] == [
        {"name": "add", "arguments": '{"a": 1, "b": 1}', "result": "2", "error": False}
    ]


def test_resume_continues_a_chat_with_tool_calls(fake: FakeServer, tmp_path: Path) -> None:
    args = ("--yes", "--mcp", MCP_FLAG, "--resume")
    run_chat(fake, tmp_path, '@fault:call echo {"text": "one"}', *args)
    result = run_chat(fake, tmp_path, "and then?", *args)
    assert result.returncode == 0, result.stderr
    roles = [m["role"] for m in fake.state.requests[-1]["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]


def test_mcp_servers_from_the_config_file_and_the_flag(tmp_path: Path) -> None:
    config = tmp_path / "chat.toml"
    config.write_text(
        "yes = true\n[mcp.servers.files]\ncommand = 'mcp-files'\nargs = ['--root', '/tmp']\n"
        "env = { LEVEL = 'debug' }\n[mcp.servers.web]\nurl = 'https://example.com/mcp'\n"
        "headers = { Authorization = 'Bearer x' }\n"
    )
    loaded = load_config(["--config", str(config), "--mcp", "web=other --flag 'a b'"], {})
    files, web = loaded.mcp
    assert files == ServerSpec("files", "mcp-files", ("--root", "/tmp"), (("LEVEL", "debug"),))
    assert web == ServerSpec("web", "other", ("--flag", "a b"))  # the flag wins
    assert loaded.yes and loaded.max_tool_rounds == 8 and loaded.tool_choice == "auto"
    config.write_text("[mcp.servers.x]\ncommand = 'a'\nurl = 'http://b'\n")
    with pytest.raises(ConfigError, match=r"mcp\.servers\.x needs either command"):
        load_config(["--config", str(config)], {})
    with pytest.raises(ConfigError, match="NAME=COMMAND"):
        load_config(["--mcp", "no-equals-sign"], {})


def test_chat_without_tools_never_imports_the_mcp_sdk(fake: FakeServer, tmp_path: Path) -> None:
    code = (
        "import sys; from chat_cli.__main__ import main; rc = main(['--plain', 'hi']); "
        "print(rc, 'mcp' in sys.modules, 'asyncio' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=chat_env(tmp_path, fake.url),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.stdout.splitlines()[-1] == "0 False False", result.stderr


# -- in a terminal -----------------------------------------------------------------------
def test_confirm_in_a_terminal_and_ctrl_c_cancels_a_slow_call(
    fake: FakeServer, tmp_path: Path, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    child = spawn_chat("--mcp", MCP_FLAG, env=chat_env(tmp_path, fake.url), timeout=30)
    child.expect(PROMPT_READY)
    child.send('@fault:call echo {"text": "hi"}\r')
    child.expect(r"run echo\? \[y\]es / \[n\]o / \[a\]lways for echo in this chat: ")
    assert '⚙ echo {"text": "hi"}' in visible(child.before)
    child.send("y")
    child.expect("tool said: hi")
    child.expect(PROMPT_READY)

    child.send('@fault:call echo {"text": "no"}\r')
    child.expect(r"run echo\?")
    child.send("n")
    child.expect("tool said: error: the user did not allow this call")
    child.expect(PROMPT_READY)

    child.send('@fault:call slow {"seconds": 60}\r')
    child.expect(r"run slow\?")
    child.send("a")
    child.expect("always")
    time.sleep(0.3)  # the call is under way in the MCP server
    child.sendintr()
    sent = time.monotonic()
    child.expect("✗ slow: cancelled by the user")
    child.expect(PROMPT_READY)
    assert time.monotonic() - sent < 1.0
    child.send("hello\r")
    child.expect("tok/s")
    child.expect(PROMPT_READY)
    said = fake.state.requests[-1]["messages"]
    assert said[-2] == {
        "role": "tool",
        "tool_call_id": said[-3]["tool_calls"][0]["id"],
        "content": "error: cancelled by the user",
    }
    child.send('@fault:call slow {"seconds": 0}\r')  # allowed always: no question
    child.expect("tool said: waited 0.0 s")
    assert "run slow?" not in visible(child.before)
    child.expect(PROMPT_READY)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)


def test_the_docs_example_config_works(tmp_path: Path, fake: FakeServer) -> None:
    (example,) = code_blocks(section(ROOT / "docs" / "chat.md", "Tools"), "toml")
    # The example names the checkout's venv; here it is the interpreter running the tests.
    assert 'command = ".venv/bin/python"' in example
    config = tmp_path / "chat.toml"
    config.write_text(example.replace('".venv/bin/python"', json.dumps(sys.executable)))
    demo, time_server = load_config(["--config", str(config)], {}).mcp
    assert (time_server.command, time_server.args) == ("uvx", ("mcp-server-time",))
    hub = McpHub([demo], print)
    made = Setup(fake, hub)
    try:
        assert made.ask("@fault:call secret_word {}") == f"tool said: The secret word is {SECRET}."
    finally:
        made.client.close()
        hub.close()


def test_a_bare_value_for_arguments_follows_one_rule(fake: FakeServer, setup: Setup) -> None:
    """Taken where it can mean only one thing (no parameter, or one), refused elsewhere."""
    assert setup.ask('@fault:call echo "Paris"') == "tool said: Paris"
    # The value's type is the tool's to check, as for any argument.
    assert "Input should be a valid string" in setup.ask("@fault:call echo 42")
    assert setup.ask('@fault:call secret_word "Paris"').endswith(SECRET + ".")
    refused = setup.ask('@fault:call add "Paris"')
    assert (
        refused == 'tool said: error: the arguments must be a JSON object with a, b, got: "Paris"'
    )


def test_the_round_limit_in_one_shot_is_exit_1_and_one_line(
    fake: FakeServer, tmp_path: Path
) -> None:
    args = ("--yes", "--max-tool-rounds", "1", "--mcp", MCP_FLAG, '@fault:loop echo {"text": "a"}')
    result = run_chat(fake, tmp_path, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if not line.startswith(("⚙", "  "))]
    assert errors == [
        "chat: stopped: the model still called tools after 1 round (--max-tool-rounds); "
        "its last calls were not run"
    ]
    report = run_chat(fake, tmp_path, "--json", *args)
    assert report.returncode == 1
    assert json.loads(report.stdout)["error"].startswith("stopped: the model still called tools")


@pytest.mark.parametrize(
    ("where", "choice", "message"),
    [
        ("flag", "no such", "invalid value 'no such' for --tool-choice: needs auto, required"),
        ("file", "some times", "invalid value 'some times' for tool_choice in"),
        (
            "flag",
            "nosuchtool",
            "tool_choice 'nosuchtool' is not an enabled tool (the tools are: echo",
        ),
        ("file", "sometimes", "tool_choice 'sometimes' is not an enabled tool"),
    ],
)
def test_a_tool_choice_that_names_no_enabled_tool_is_exit_2_before_asking(
    fake: FakeServer, tmp_path: Path, where: str, choice: str, message: str
) -> None:
    if where == "file":
        config = tmp_path / "chat.toml"
        config.write_text(f"tool_choice = {json.dumps(choice)}\n")
        flags = ["--config", str(config)]
    else:
        flags = ["--tool-choice", choice]
    result = run_chat(fake, tmp_path, *flags, "--mcp", MCP_FLAG, "hi")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("chat: ") and message in line, line
    assert fake.state.requests == []  # nothing was sent
    chosen = run_chat(fake, tmp_path, "--tool-choice", "echo", "--mcp", MCP_FLAG, "hi")
    assert chosen.returncode == 0, chosen.stderr
    assert fake.state.requests[-1]["tool_choice"] == {
        "type": "function",
        "function": {"name": "echo"},
    }


# -- MCP servers that misbehave -----------------------------------------------------------
def _wrapped_server(tmp_path: Path, name: str, before: str) -> ServerSpec:
    """tests/mcp_server.py, with `before` run first (Python statements)."""
    script = tmp_path / f"{name}.py"
    script.write_text(
        f"import runpy, sys, threading, os, time, pathlib\n{before}\n"
        f"runpy.run_path({str(ROOT / 'tests' / 'mcp_server.py')!r}, run_name='__main__')\n"
    )
    return ServerSpec(name, command=sys.executable, args=(str(script),))


def test_a_server_that_prints_to_stdout_is_one_line_and_its_tools_work(
    fake: FakeServer, tmp_path: Path
) -> None:
    noisy = _wrapped_server(tmp_path, "noisy", "print('Starting noisy server v1.0', flush=True)")
    flag = f"noisy={noisy.command} {noisy.args[0]}"
    result = run_chat(fake, tmp_path, "--yes", "--mcp", flag, '@fault:call echo {"text": "hi"}')
    assert result.returncode == 0, result.stderr
    assert result.stdout == "tool said: hi\n"
    problems = [line for line in result.stderr.splitlines() if line.startswith("✗")]
    assert problems == [
        "✗ MCP server noisy wrote to its stdout what is not MCP (Starting noisy server v1.0); "
        "ignored: its logs belong on stderr"
    ]
    assert "Traceback" not in result.stderr


def test_a_server_that_dies_between_calls_shows_down_and_on_starts_it_again(
    fake: FakeServer, tmp_path: Path
) -> None:
    die = tmp_path / "die"
    spec = _wrapped_server(
        tmp_path,
        "t",
        f"def watch():\n    while not os.path.exists({str(die)!r}):\n        time.sleep(0.05)\n"
        "    sys.stderr.write('died on its own\\n'); sys.stderr.flush(); os._exit(3)\n"
        "threading.Thread(target=watch, daemon=True).start()",
    )
    reported: list[str] = []
    hub = McpHub([spec], reported.append)
    made = Setup(fake, hub)
    toolbox = made.session.tools
    assert toolbox is not None
    try:
        assert toolbox.lines()[0].startswith("  t: ready · ")
        die.touch()
        wait_for(lambda: "down" in toolbox.lines()[0], 10, "the server to show down")
        assert toolbox.lines()[0].startswith("  t: down (died on its own) · ")
        assert toolbox.lines()[0].endswith("/tools on t starts it again")
        assert "    ✗ echo  Return the text unchanged." in toolbox.lines()
        assert reported == ["MCP server t stopped (died on its own); going on without its tools"]
        made.ask("hi")
        assert "tools" not in fake.state.requests[-1]  # its tools are not offered
        die.unlink()
        assert toolbox.toggle("t", True) == "server t on, started again: ready"
        assert toolbox.lines()[0].startswith("  t: ready · ")
        assert made.ask('@fault:call echo {"text": "back"}') == "tool said: back"
        assert len(reported) == 1
    finally:
        made.client.close()
        hub.close()


def test_servers_still_starting_are_named_at_once_and_ctrl_c_skips_them(
    fake: FakeServer, tmp_path: Path, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    hang = _wrapped_server(tmp_path, "hangs", "time.sleep(60)")
    flags = ["--plain", "--mcp", f"hangs={hang.command} {hang.args[0]}"]
    child = spawn_chat(*flags, "hello", env=chat_env(tmp_path, fake.url), timeout=30)
    child.expect(r"starting MCP servers: hangs… \(Ctrl-C skips them\)")
    asked = time.monotonic()
    child.sendintr()
    child.expect(r"skipped MCP servers still starting \(hangs\)")
    child.expect("Hello")
    assert time.monotonic() - asked < 5.0  # not the 30 s a hung server takes to fail
    assert "tools" not in fake.state.requests[-1]  # asked without the skipped server's tools
    child.expect(pexpect.EOF)


def test_the_start_notice_comes_within_a_third_of_a_second(tmp_path: Path) -> None:
    hang = _wrapped_server(tmp_path, "hangs", "time.sleep(2)")
    said: list[tuple[float, str]] = []
    hub = McpHub([hang], print, lambda line: said.append((time.monotonic(), line)))
    started = time.monotonic()
    try:
        hub.start()
        [(when, line)] = said
        assert line == "starting MCP servers: hangs… (Ctrl-C skips them)"
        assert 0.25 <= when - started < 0.6
        assert hub.servers["hangs"].status == "ready"  # it was waited for
    finally:
        hub.close()


def test_a_session_gets_its_tools_with_a_view_to_show_them_when_it_is_built() -> None:
    client = ChatClient("http://127.0.0.1:9/v1", None, 10.0)
    with pytest.raises(ValueError, match="needs a tool view"):
        Session(client, Conversation(), Sampling(MODEL), tools=Toolbox(None))
    view = ToolView(io.StringIO(), None, styled=False)
    session = Session(client, Conversation(), Sampling(MODEL), tools=Toolbox(None), tool_view=view)
    assert session.tools is not None and session.tool_view is view
