"""Roles: `[roles.NAME]`, `chat -r NAME`, the piped input in a role's prompt, `/role` and
`/roles`, against the fake server (its requests show what chat sent)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_cli import chats
from chat_cli.api.client import ChatClient, Sampling
from chat_cli.commands import Commands
from chat_cli.config import load_config
from chat_cli.conversation import Conversation
from chat_cli.errors import ChatError, ConfigError
from chat_cli.render.plain import PlainRenderer
from chat_cli.roles import BUILTINS, Role
from chat_cli.servers import Server
from chat_cli.session import Session
from chat_cli.switching import Switcher
from chat_cli.tools.loop import ToolView
from chat_cli.tools.mcp_client import McpHub
from chat_cli.tools.mcp_config import ServerSpec
from chat_cli.tools.toolbox import Toolbox
from tests.chat_support import CHAT, ROOT, chat_env, fake_server
from tests.fake_openai import MODEL, FakeServer

PIRATE = """
[roles.pirate]
description = "talks like a pirate"
system = "You are a pirate."
temperature = 0.7
max_tokens = 40

[roles.review]
system = "Review tersely."
prompt = "Check this change for bugs."
model = "other-model"
"""


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chat.toml"
    path.write_text(text)
    return path


def chat(
    tmp_path: Path, url: str, *args: str, stdin: str = "", config: str = PIRATE
) -> subprocess.CompletedProcess[str]:
    env = chat_env(tmp_path, url, CHAT_CONFIG=str(write_config(tmp_path, config)))
    return subprocess.run(
        [*CHAT, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


# -- the config file ---------------------------------------------------------------------
def test_file_roles_join_the_built_ins_and_override_one(tmp_path: Path) -> None:
    config = load_config(["--config", str(write_config(tmp_path, PIRATE)), "-r", "pirate"], {})
    assert set(config.roles) == {*BUILTINS, "pirate"}
    assert config.roles["review"].system == "Review tersely."  # the file's, not the built-in
    assert not config.roles["review"].builtin and config.roles["shell"].builtin
    assert config.system == "You are a pirate." and config.temperature == 0.7
    assert config.max_tokens == 40 and config.role == config.roles["pirate"]
    # What /role - goes back to: the settings without the role.
    assert config.base["system"] is None and config.base["temperature"] is None


def test_flags_beat_the_role_and_the_role_beats_env_and_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "temperature = 0.1\n" + PIRATE)
    env = {"CHAT_MAX_TOKENS": "99"}
    config = load_config(["--config", str(path), "-r", "pirate", "-s", "Be brief."], env)
    assert config.system == "Be brief."  # the flag
    assert config.temperature == 0.7 and config.max_tokens == 40  # the role's


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[roles.x]\ncolour = 'red'", "[roles.x]: unknown keys colour; known: description"),
        ("[roles.x]\ntemperature = 'hot'", "[roles.x]: temperature must be a number"),
        ("[roles.x]\ntemperature = -1", "[roles.x]: temperature needs a number from 0 up"),
        ("[roles.x]\nmax_tokens = 1.5", "[roles.x]: max_tokens needs a whole number >= 1"),
        ("[roles.x]\ntools = 'no'", "[roles.x]: tools must be true or false"),
        ("[roles.x]\nsystem = 5", "[roles.x]: system must be a string"),
        ("[roles]\nx = 5", "[roles.x] must be a table"),
        ("roles = 5", "roles must be a table of [roles.NAME] tables"),
        ("role = 'nope'", "unknown role 'nope' (role in config file"),
    ],
)
def test_a_wrong_role_table_is_one_line_naming_the_file(
    tmp_path: Path, text: str, says: str
) -> None:
    path = write_config(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(["--config", str(path)], {})
    message = str(caught.value)
    assert says in message and str(path) in message and "\n" not in message


def test_an_unknown_role_is_one_line_listing_the_known_ones(tmp_path: Path) -> None:
    result = chat(tmp_path, "http://127.0.0.1:9", "-r", "pirat", "hi")
    assert result.returncode == 2
    assert result.stderr == (
        "chat: unknown role 'pirat' (--role); known roles: explain, pirate, review, shell\n"
    )
    env_role = subprocess.run(
        [*CHAT, "hi"], env=chat_env(tmp_path, "http://127.0.0.1:9", CHAT_ROLE="x"),
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert env_role.returncode == 2 and "unknown role 'x' ($CHAT_ROLE)" in env_role.stderr


# -- one-shot and pipe ---------------------------------------------------------------------
def test_piped_input_fills_the_role_prompt_once_and_literally(
    tmp_path: Path, fake: FakeServer
) -> None:
    diff = "-old {input} line\n+new {x} line\n"
    result = chat(tmp_path, fake.url, "-r", "review", "--model", MODEL, stdin=diff,
                  config="")  # fmt: skip
    assert result.returncode == 0, result.stderr
    request = fake.state.requests[-1]
    system, user = request["messages"]
    assert system == {"role": "system", "content": BUILTINS["review"].system}
    # The input is data: its own "{input}" stays text, not a second placeholder.
    assert user == {"role": "user", "content": "Review this:\n\n" + diff}
    assert request["temperature"] == 0.2
    assert "tools" not in request


def test_a_prompt_without_placeholder_gets_the_input_after_it(
    tmp_path: Path, fake: FakeServer
) -> None:
    result = chat(tmp_path, fake.url, "-r", "review", "--max-tokens", "9", "look", stdin="x = 1\n")
    assert result.returncode == 0, result.stderr
    request = fake.state.requests[-1]
    assert request["model"] == "other-model"  # the role's model
    assert request["max_tokens"] == 9
    assert request["messages"][-1]["content"] == "Check this change for bugs.\n\nlook\n\nx = 1\n"


def test_a_role_without_tools_offers_none_even_with_mcp_servers(
    tmp_path: Path, fake: FakeServer
) -> None:
    server = f"t={sys.executable} {ROOT / 'tests' / 'mcp_server.py'}"
    question = '@fault:call echo {"text": "hi"}'
    result = chat(tmp_path, fake.url, "-r", "shell", "--yes", "--mcp", server, question)
    # The model asks for a tool chat does not offer: nothing runs, one line says so.
    assert "tools" not in fake.state.requests[-1]
    assert result.returncode == 1
    assert "chat has no tools enabled" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_the_history_records_the_role(tmp_path: Path, fake: FakeServer) -> None:
    result = chat(tmp_path, fake.url, "-r", "pirate", "ahoy")
    assert result.returncode == 0, result.stderr
    listed = chat(tmp_path, fake.url, "logs", "--json")
    (row,) = json.loads(listed.stdout)
    assert row["sampling"]["role"] == "pirate" and row["sampling"]["temperature"] == 0.7


# -- /role and /roles in process -----------------------------------------------------------
@pytest.fixture
def commands(fake: FakeServer, tmp_path: Path) -> Iterator[tuple[Session, Commands, io.StringIO]]:
    config = load_config(["--config", str(write_config(tmp_path, PIRATE))], {})
    conversation = Conversation(path=chats.new_autosave_path(tmp_path / "conversations"))
    client = ChatClient(fake.url + "/v1", None, 10.0)
    session = Session(client, conversation, Sampling(MODEL, temperature=0.3))
    switcher = Switcher(
        session,
        roles=config.roles,
        servers={"default": _server(fake)},
        base={**config.base, "model": MODEL, "temperature": 0.3},
    )
    out = io.StringIO()
    yield session, Commands(session, out, tmp_path / "conversations", switcher=switcher), out
    session.client.close()


def _server(fake: FakeServer) -> Server:
    return Server("default", fake.url + "/v1")


def test_role_sets_prompt_model_and_settings_and_dash_drops_them(
    commands: tuple[Session, Commands, io.StringIO],
) -> None:
    session, cmds, out = commands
    cmds.run("/role review")
    assert session.role == "review" and session.sampling.model == "other-model"
    assert session.conversation.system == "Review tersely."
    cmds.run("/role pirate")
    # The settings review set are gone with it: each role starts from the configured ones.
    assert session.sampling.model == "other-model"  # pirate names no model: it stays
    assert session.sampling.temperature == 0.7 and session.sampling.max_tokens == 40
    cmds.run("/role -")
    assert session.role is None and session.conversation.system is None
    assert session.sampling.temperature == 0.3 and session.sampling.max_tokens is None
    shown = out.getvalue()
    assert "Role: pirate · model other-model · temperature 0.7, max_tokens 40" in shown
    with pytest.raises(ChatError, match=r"^unknown role 'nope'; known roles: explain, pirate, "):
        cmds.run("/role nope")


def test_roles_lists_each_with_where_it_comes_from(
    commands: tuple[Session, Commands, io.StringIO],
) -> None:
    _, cmds, out = commands
    cmds.run("/role shell")
    cmds.run("/roles")
    rows = out.getvalue().splitlines()
    assert any(r.startswith(" * shell ") and r.endswith("(built-in)") for r in rows)
    assert any(r.startswith("   pirate ") and "talks like a pirate (chat.toml)" in r for r in rows)
    assert any(r.startswith("   review ") and r.endswith("(chat.toml)") for r in rows)


def test_a_role_with_a_model_the_server_lacks_is_refused_and_changes_nothing(
    commands: tuple[Session, Commands, io.StringIO], fake: FakeServer
) -> None:
    session, cmds, _ = commands
    fake.state.models = [MODEL]
    with pytest.raises(ChatError, match="role 'review' wants model 'other-model', not served"):
        cmds.run("/role review")
    assert session.role is None and session.sampling.model == MODEL


def test_role_question_template() -> None:
    role = Role("r", prompt="A {input} B {input}")
    assert role.question("x{input}") == "A x{input} B x{input}"  # never expanded in the input
    assert Role("r").question("q") == "q"
    assert Role("r", prompt="P").question("") == "P"


def test_a_role_without_tools_turns_them_off_and_dropping_it_turns_them_on(
    fake: FakeServer, tmp_path: Path
) -> None:
    spec = ServerSpec("t", command=sys.executable, args=(str(ROOT / "tests" / "mcp_server.py"),))
    hub = McpHub([spec], print)  # started only when a request offers its tools: never here
    toolbox = Toolbox(hub, yes=True)
    session = Session(
        ChatClient(fake.url + "/v1", None, 10.0), Conversation(), Sampling(MODEL),
        tools=toolbox, tool_view=ToolView(io.StringIO(), None, styled=False),
    )  # fmt: skip
    base = {"system": None, "model": MODEL, "temperature": None, "top_p": None}
    switcher = Switcher(
        session, roles=BUILTINS, servers={"default": _server(fake)},
        base=base | {"max_tokens": None, "seed": None}, toolbox=toolbox,
    )  # fmt: skip
    cmds = Commands(session, io.StringIO(), tmp_path, switcher=switcher)
    try:
        cmds.run("/role shell")
        assert session.tools is None
        with pytest.raises(ChatError, match=r"^tools are off for role shell; /role - turns"):
            cmds.run("/tools")
        session.ask("list files", PlainRenderer(io.StringIO(), footer=False, styled=False))
        assert "tools" not in fake.state.requests[-1]
        cmds.run("/role review")  # a role that says nothing of tools: as configured
        assert session.tools is toolbox
        cmds.run("/role shell")
        cmds.run("/role -")
        assert session.tools is toolbox
    finally:
        session.client.close()
        hub.close()
