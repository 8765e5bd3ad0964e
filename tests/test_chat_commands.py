"""Slash commands and conversation persistence, in process against the fake server."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import re
import struct
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_cli import chats
from chat_cli.api.client import ChatClient, Sampling
from chat_cli.commands import COMMANDS, Commands, Exit, Send
from chat_cli.conversation import Conversation, Message
from chat_cli.errors import ChatError
from chat_cli.render.plain import PlainRenderer
from chat_cli.session import Session
from tests.chat_support import fake_server
from tests.fake_openai import DEFAULT_ANSWER, MODEL, FakeServer


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server


@pytest.fixture
def setup(fake: FakeServer, tmp_path: Path) -> Iterator[tuple[Session, Commands, io.StringIO]]:
    conversation = Conversation(path=chats.new_autosave_path(tmp_path / "conversations"))
    client = ChatClient(fake.url + "/v1", None, 10.0)
    session = Session(client, conversation, Sampling(MODEL))
    out = io.StringIO()
    yield session, Commands(session, out, tmp_path / "conversations"), out
    client.close()


def ask(session: Session, text: str) -> None:
    session.ask(text, PlainRenderer(io.StringIO(), footer=False, styled=False))


# The commands docs/chat.md promises users, written out here rather than read from COMMANDS.
PROMISED_COMMANDS = [
    "/help", "/clear", "/system", "/model", "/role", "/roles", "/server", "/set", "/retry",
    "/file", "/download", "/undo", "/trim", "/compact", "/history", "/save", "/load", "/chats",
    "/search", "/stats", "/copy", "/reasoning", "/tools", "/last-tool", "/exit",
]  # fmt: skip


def test_help_lists_every_promised_command_with_its_description(
    setup: tuple[Session, Commands, io.StringIO],
) -> None:
    _, commands, out = setup
    assert commands.run("/help") is None
    rows = [line.split() for line in out.getvalue().splitlines() if line.startswith("  /")]
    assert [row[0] for row in rows] == PROMISED_COMMANDS
    assert all(len(row) > 1 for row in rows), "a command without a description"


@pytest.mark.parametrize("columns", [30, 60, 80, 200])
def test_help_fits_the_terminal_it_is_shown_in_without_breaking_a_word(
    setup: tuple[Session, Commands, io.StringIO], tmp_path: Path, columns: int
) -> None:
    session, _, _ = setup
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with open(slave, "w", encoding="utf-8") as out:
        assert Commands(session, out, tmp_path).run("/help") is None
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the written side is closed and read
        while chunk := os.read(master, 65536):
            shown += chunk
    os.close(master)
    lines = shown.decode().replace("\r\n", "\n").splitlines()
    assert max(map(len, lines)) < columns
    flat = " ".join(shown.decode().split())
    for command in COMMANDS.values():
        assert f"{command.name} {command.args}".strip() + " " in flat + " "
        assert " ".join(command.help.split()) in flat, command.name
    assert "Ctrl-D exits" in flat


def test_unknown_and_prefix_commands(setup: tuple[Session, Commands, io.StringIO]) -> None:
    _, commands, _ = setup
    with pytest.raises(ChatError, match=r"^unknown command /nope; /help lists them$"):
        commands.run("/nope")
    with pytest.raises(ChatError, match=r"^unknown command /sve; did you mean /save\? "):
        commands.run("/sve trip")
    with pytest.raises(ChatError, match=r"did you mean /exit\?"):
        commands.run("/exti")
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


def test_latest_skips_a_corrupt_newest_file(tmp_path: Path) -> None:
    warnings: list[str] = []
    assert chats.latest(tmp_path, warnings.append) is None
    first = Conversation(path=tmp_path / "a.json", messages=[Message("user", "x")])
    first.autosave()
    found = chats.latest(tmp_path, warnings.append)
    assert found is not None and found[0] == tmp_path / "a.json"
    assert found[1].messages == first.messages
    broken = tmp_path / "b.json"
    broken.write_text('{"messages": [')
    os.utime(broken, (time.time() + 5, time.time() + 5))
    found = chats.latest(tmp_path, warnings.append)
    assert found is not None and found[0] == tmp_path / "a.json"
    assert warnings == [f"{broken} is not a saved chat (JSON from /save or autosave); skipped it"]


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


def test_named_conversations_save_list_load(
    setup: tuple[Session, Commands, io.StringIO], tmp_path: Path
) -> None:
    session, commands, out = setup
    folder = tmp_path / "conversations"
    ask(session, "plan the trip")
    unnamed = session.conversation.path
    assert unnamed is not None and unnamed.exists()
    commands.run("/save trip")
    assert session.conversation.path == folder / "trip.json" and not unnamed.exists()
    ask(session, "and the hotel?")  # autosave goes on under the name
    assert len(json.loads((folder / "trip.json").read_text())["messages"]) == 4
    commands.run("/clear")
    ask(session, "something else")
    out.seek(0)
    out.truncate()
    commands.run("/chats")
    rows = out.getvalue().splitlines()
    assert rows[0].startswith(f" * {session.conversation.path.stem}  ")
    assert rows[0].endswith("2 messages  something else")
    assert rows[1].startswith("   trip  ") and rows[1].endswith("4 messages  plan the trip")
    with pytest.raises(ChatError, match="a conversation named 'trip' exists"):
        commands.run("/save trip")
    commands.run("/load trip")
    assert session.conversation.path == folder / "trip.json"
    assert [m.content for m in session.conversation.messages][-2] == "and the hotel?"
    with pytest.raises(ChatError, match="no saved conversation named 'nope'"):
        commands.run("/load nope")
    with pytest.raises(ChatError, match="not a conversation name"):
        commands.run("/save -x")


def test_save_does_not_create_directories(
    setup: tuple[Session, Commands, io.StringIO], tmp_path: Path
) -> None:
    session, commands, _ = setup
    ask(session, "hi")
    target = tmp_path / "nonexistent" / "dir" / "x.json"
    with pytest.raises(ChatError, match=f"no directory {target.parent}"):
        commands.run(f"/save {target}")
    assert not (tmp_path / "nonexistent").exists()


def test_old_unnamed_chats_are_pruned_named_ones_kept(tmp_path: Path) -> None:
    for index in range(chats.KEEP_UNNAMED + 5):
        path = tmp_path / f"20240101-{index:06d}-abcdef.json"
        path.write_text("{}")
        os.utime(path, (1000 + index, 1000 + index))
    named = tmp_path / "keep-me.json"
    named.write_text("{}")
    os.utime(named, (1, 1))
    assert chats.prune(tmp_path) == 5
    left = chats.newest_first(tmp_path)
    assert len(left) == chats.KEEP_UNNAMED + 1 and named in left
    assert not (tmp_path / "20240101-000004-abcdef.json").exists()
    assert (tmp_path / "20240101-000005-abcdef.json").exists()


def test_command_aliases_and_ambiguous_prefixes(
    setup: tuple[Session, Commands, io.StringIO],
) -> None:
    _, commands, _ = setup
    assert isinstance(commands.run("/quit"), Exit)
    assert isinstance(commands.run("/bye"), Exit)
    assert isinstance(commands.run("/q"), Exit)
    with pytest.raises(
        ChatError, match=r"^/s could be /save, /search, /server, /set, /stats, /system$"
    ):
        commands.run("/s")


def test_set_refuses_what_config_refuses(setup: tuple[Session, Commands, io.StringIO]) -> None:
    session, commands, _ = setup
    with pytest.raises(
        ChatError, match=re.escape("max_tokens needs a whole number >= 1, got '1.7'")
    ):
        commands.run("/set max_tokens 1.7")
    with pytest.raises(ChatError, match="top_p needs a number from 0 to 1, got '2'"):
        commands.run("/set top_p 2")
    assert session.sampling.max_tokens is None and session.sampling.top_p is None


ANSWER_WITH_CODE = "Try:\n\n```python\nprint(1)\n```\n\nor\n\n~~~\necho 2\n```\n~~~\n"


@pytest.fixture
def answered(setup: tuple[Session, Commands, io.StringIO]) -> tuple[Commands, io.StringIO]:
    session, commands, out = setup
    session.conversation.messages += [
        Message("user", "how?"),
        Message("assistant", ANSWER_WITH_CODE),
    ]
    return commands, out


def test_copy_says_what_was_sent_over_osc_52(
    answered: tuple[Commands, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    commands, out = answered
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "MIXVLLM_SESSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    commands.run("/copy code")
    text = out.getvalue()
    payload = base64.b64encode(b"echo 2\n```\n").decode()
    assert f"\x1b]52;c;{payload}\x07" in text
    assert "Copied" not in text
    assert "Sent code block 2 of 2 (11 characters) to the terminal as an OSC 52" in text
    assert "copy nothing" in text
    commands.run("/copy 1")
    assert base64.b64encode(b"print(1)\n").decode() in out.getvalue()
    with pytest.raises(ChatError, match=re.escape("has 2 code blocks; /copy 1..2")):
        commands.run("/copy 3")
    monkeypatch.setenv("MIXVLLM_SESSION", "abc")
    commands.run("/copy")
    assert out.getvalue().endswith(
        f"Sent the last answer ({len(ANSWER_WITH_CODE)} characters) to the browser's clipboard "
        "(OSC 52).\n"
    )


def test_copy_uses_a_clipboard_tool_outside_the_browser(
    answered: tuple[Commands, io.StringIO], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    commands, out = answered
    # wl-copy's contract: the text on stdin goes to the clipboard, exit 0.
    clipboard = tmp_path / "clipboard"
    tool = tmp_path / "bin" / "wl-copy"
    tool.parent.mkdir()
    tool.write_text(f"#!/bin/sh\ncat > {clipboard}\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.delenv("MIXVLLM_SESSION", raising=False)
    commands.run("/copy code")
    assert clipboard.read_text() == "echo 2\n```\n"
    assert out.getvalue() == "Copied code block 2 of 2 (11 characters) with wl-copy.\n"
    monkeypatch.setenv("MIXVLLM_SESSION", "abc")  # the browser terminal: its clipboard
    commands.run("/copy 1")
    assert clipboard.read_text() == "echo 2\n```\n" and "\x1b]52;c;" in out.getvalue()


def test_copy_without_code_blocks(setup: tuple[Session, Commands, io.StringIO]) -> None:
    session, commands, _ = setup
    ask(session, "hi")
    with pytest.raises(ChatError, match="has no code blocks"):
        commands.run("/copy code")
    with pytest.raises(ChatError, match="usage: /copy"):
        commands.run("/copy everything")
