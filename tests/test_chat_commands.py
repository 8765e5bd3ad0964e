"""Slash commands and conversation persistence, in process against the fake server."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_cli import conversation as conv_mod
from chat_cli.client import ChatClient, Sampling
from chat_cli.commands import Commands, Exit, Send
from chat_cli.conversation import Conversation, Message
from chat_cli.errors import ChatError
from chat_cli.render import PlainRenderer
from chat_cli.session import Session
from tests.chat_support import fake_server
from tests.fake_openai import DEFAULT_ANSWER, MODEL, FakeServer


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server


@pytest.fixture
def setup(fake: FakeServer, tmp_path: Path) -> Iterator[tuple[Session, Commands, io.StringIO]]:
    conversation = Conversation(path=conv_mod.new_autosave_path(tmp_path / "conversations"))
    client = ChatClient(fake.url + "/v1", None, 10.0)
    session = Session(client, conversation, Sampling(MODEL))
    out = io.StringIO()
    yield session, Commands(session, out, tmp_path / "conversations"), out
    client.close()


def ask(session: Session, text: str) -> None:
    session.ask(text, PlainRenderer(io.StringIO(), footer=False, styled=False))


# The commands the README promises users, written out here rather than read from COMMANDS.
PROMISED_COMMANDS = [
    "/help", "/clear", "/system", "/model", "/set", "/retry", "/undo", "/history", "/save",
    "/load", "/stats", "/copy", "/reasoning", "/exit",
]  # fmt: skip


def test_help_lists_every_promised_command_with_its_description(
    setup: tuple[Session, Commands, io.StringIO],
) -> None:
    _, commands, out = setup
    assert commands.run("/help") is None
    rows = [line.split() for line in out.getvalue().splitlines() if line.startswith("  /")]
    assert [row[0] for row in rows] == PROMISED_COMMANDS
    assert all(len(row) > 1 for row in rows), "a command without a description"


def test_unknown_and_prefix_commands(setup: tuple[Session, Commands, io.StringIO]) -> None:
    _, commands, _ = setup
    with pytest.raises(ChatError, match="unknown command /nope"):
        commands.run("/nope")
    assert isinstance(commands.run("/ex"), Exit)  # unique prefix


def test_set_system_model(setup: tuple[Session, Commands, io.StringIO], fake: FakeServer) -> None:
    session, commands, out = setup
    commands.run("/set max_tokens 12")
    commands.run("/set temperature default")
    with pytest.raises(ChatError, match="seed needs a whole number"):
        commands.run("/set seed lots")
    with pytest.raises(ChatError, match="cannot set"):
        commands.run("/set colour 3")
    commands.run("/system Answer in French.")
    commands.run("/model other-model")
    with pytest.raises(ChatError, match="served: fake-model, other-model"):
        commands.run("/model missing")
    ask(session, "hi")
    request = fake.state.requests[-1]
    assert request["max_tokens"] == 12 and "temperature" not in request
    assert request["model"] == "other-model"
    assert request["messages"][0] == {"role": "system", "content": "Answer in French."}
    commands.run("/model")
    assert "* other-model" in out.getvalue()


def test_retry_undo_history_clear(setup: tuple[Session, Commands, io.StringIO]) -> None:
    session, commands, out = setup
    ask(session, "one")
    ask(session, "two")
    assert commands.run("/retry") == Send("two")
    assert [m.content for m in session.conversation.messages] == ["one", DEFAULT_ANSWER]
    commands.run("/undo")
    assert session.conversation.messages == []
    with pytest.raises(ChatError, match="nothing to retry"):
        commands.run("/retry")
    ask(session, "three")
    commands.run("/history")
    assert "[user] three" in out.getvalue()
    old_path = session.conversation.path
    commands.run("/clear")
    assert session.conversation.messages == [] and session.conversation.path != old_path
    assert old_path is not None and json.loads(old_path.read_text())["messages"]


def test_save_markdown_and_json_then_load(
    setup: tuple[Session, Commands, io.StringIO], tmp_path: Path
) -> None:
    session, commands, _ = setup
    ask(session, "question")
    session.conversation.messages.append(Message("user", "cut off"))
    session.conversation.messages.append(Message("assistant", "partial", incomplete="interrupted"))
    commands.run(f"/save {tmp_path / 'chat.md'}")
    markdown = (tmp_path / "chat.md").read_text()
    assert "## User\n\nquestion" in markdown and "*[interrupted]*" in markdown
    commands.run(f"/save {tmp_path / 'chat.json'}")
    commands.run("/clear")
    commands.run(f"/load {tmp_path / 'chat.json'}")
    loaded = session.conversation.messages
    assert [m.content for m in loaded] == ["question", DEFAULT_ANSWER, "cut off", "partial"]
    assert loaded[-1].incomplete == "interrupted"
    with pytest.raises(ChatError, match="is not a saved chat"):
        commands.run(f"/load {tmp_path / 'chat.md'}")
    with pytest.raises(ChatError, match="cannot read"):
        commands.run(f"/load {tmp_path / 'missing.json'}")


def test_stats_and_copy(setup: tuple[Session, Commands, io.StringIO]) -> None:
    session, commands, out = setup
    with pytest.raises(ChatError, match="no answer to copy"):
        commands.run("/copy")
    ask(session, "hi")
    commands.run("/stats")
    assert "requests 1 · errors 0" in out.getvalue() and "completion tokens" in out.getvalue()
    commands.run("/copy")
    assert "\x1b]52;c;" in out.getvalue()


def test_latest_autosave_is_found(tmp_path: Path) -> None:
    assert conv_mod.latest(tmp_path) is None
    first = Conversation(path=tmp_path / "a.json", messages=[Message("user", "x")])
    first.autosave()
    assert conv_mod.latest(tmp_path) == tmp_path / "a.json"
    assert conv_mod.load(tmp_path / "a.json").messages == first.messages


def test_autosave_failure_stops_saving_but_not_the_chat(
    setup: tuple[Session, Commands, io.StringIO], tmp_path: Path
) -> None:
    session, _, _ = setup
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    session.conversation.path = blocker / "chat.json"
    ask(session, "still answered?")
    assert session.conversation.messages[-1].content == DEFAULT_ANSWER
    assert session.conversation.path is None
    assert session.conversation.autosave_failure is not None
    assert "autosave stopped: cannot write" in session.conversation.autosave_failure


def test_saved_chats_and_history_are_private(
    setup: tuple[Session, Commands, io.StringIO], tmp_path: Path
) -> None:
    session, _, _ = setup
    ask(session, "secret")
    path = session.conversation.path
    assert path is not None
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
