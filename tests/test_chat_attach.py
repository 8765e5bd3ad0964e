"""Files and images in the prompt: `/file`, `chat -a`, what the request carries, what is kept
(retry, autosave, resume, history), and the one line for each file that cannot go."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from chat_cli import attach, errors
from chat_cli import conversation as conv_mod
from chat_cli.api.client import ChatClient, Sampling
from chat_cli.attach import AttachError
from chat_cli.commands import Commands, Send
from chat_cli.config import load_config
from chat_cli.conversation import Conversation
from chat_cli.render.plain import PlainRenderer
from chat_cli.session import Session
from tests.chat_support import CHAT, PROMPT_READY, chat_env, exit_status, fake_server, visible
from tests.fake_openai import MODEL, FakeServer
from tests.support import wait_for

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(17)
STEP_S = 30


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text("first line\nuses ``` fences\n")
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "cat.png").write_bytes(PNG)
    (tmp_path / "blob.bin").write_bytes(b"\x7fELF\x00\x01" * 100)
    return tmp_path


def session_for(fake: FakeServer, tmp_path: Path) -> Session:
    conversation = Conversation(path=tmp_path / "conversations" / "c.json")
    return Session(ChatClient(fake.url + "/v1", None, 10.0), conversation, Sampling(MODEL))


def quiet() -> PlainRenderer:
    return PlainRenderer(io.StringIO(), footer=False, styled=False)


def user_content(fake: FakeServer, index: int = -1) -> Any:
    users = [m for m in fake.state.requests[index]["messages"] if m["role"] == "user"]
    return users[-1]["content"]


# -- reading files ------------------------------------------------------------------------
def test_a_text_file_goes_fenced_under_its_name(files: Path) -> None:
    [notes] = attach.load(["notes.txt"], files)
    content = attach.api_content("What is in it?", [notes])
    assert content == "What is in it?\n\nnotes.txt:\n````\nfirst line\nuses ``` fences\n````"


def test_globs_expand_sorted_and_a_glob_without_a_match_says_so(files: Path) -> None:
    assert [a.name for a in attach.load(["*.txt"], files)] == ["b.txt", "notes.txt"]
    with pytest.raises(AttachError, match=r"^no file matches \*\.md$"):
        attach.load(["*.md"], files)


def test_a_binary_file_is_refused_with_why_and_how_big(files: Path) -> None:
    with pytest.raises(AttachError) as refused:
        attach.load(["blob.bin"], files)
    assert str(refused.value).startswith("cannot attach blob.bin: it is binary (600 B)")


def test_a_file_over_the_limit_is_refused_with_its_size_and_the_limit(files: Path) -> None:
    (files / "big.log").write_bytes(b"x" * (attach.TEXT_LIMIT + 2048))
    with pytest.raises(AttachError) as refused:
        attach.load(["big.log"], files)
    assert str(refused.value) == (
        "cannot attach big.log: it is 258.0 KB, over the 256.0 KB limit for text files"
    )


def test_a_folder_a_missing_file_and_a_fake_image_are_refused(files: Path) -> None:
    (files / "sub").mkdir()
    (files / "fake.png").write_text("not a picture")
    for name, why in [
        ("sub", "it is a folder"),
        ("gone.txt", "No such file or directory"),
        ("fake.png", "it is not a PNG image (13 B)"),
    ]:
        with pytest.raises(AttachError, match=re.escape(why)):
            attach.load([name], files)


def test_an_image_goes_as_an_image_url_data_part(files: Path) -> None:
    [image] = attach.load(["cat.png"], files)
    content = attach.api_content("What is this?", [image])
    assert content[0] == {"type": "text", "text": "What is this?"}
    assert content[1]["type"] == "image_url"
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")


# -- the session: request, retry, autosave ------------------------------------------------
def test_the_request_carries_the_files_and_retry_sends_them_again(
    fake: FakeServer, files: Path
) -> None:
    session = session_for(fake, files)
    attached = tuple(attach.load(["notes.txt", "cat.png"], files))
    session.ask("Describe", quiet(), attachments=attached)
    content = user_content(fake)
    assert content[0]["text"].startswith("Describe\n\nnotes.txt:\n````\nfirst line")
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")

    saved = conv_mod.load(files / "conversations" / "c.json")  # autosave keeps them
    assert saved.messages[0].attachments == attached
    assert saved.api_messages() == session.conversation.api_messages()

    commands = Commands(session, io.StringIO(), files / "conversations")
    assert commands.run("/retry") == Send("Describe", attached)


def test_a_text_only_model_refusing_an_image_is_one_line(fake: FakeServer, files: Path) -> None:
    session = session_for(fake, files)
    with pytest.raises(errors.NoVision) as refused:
        session.ask("look @fault:http400vision", quiet(), attachments=tuple(
            attach.load(["cat.png"], files)))  # fmt: skip
    line = str(refused.value)
    assert line.startswith(
        "the model server refused the image (400: ValueError: fake-model is not a multimodal "
        f"model): {MODEL} may not take images"
    )
    assert "\n" not in line and "Traceback" not in line
    retried = session.retry()  # the question and its image wait for /retry
    assert retried is not None and retried.attachments[0].name == "cat.png"


def test_the_file_command_attaches_lists_and_drops(fake: FakeServer, files: Path) -> None:
    out = io.StringIO()
    commands = Commands(session_for(fake, files), out, files / "conversations")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(files)
        commands.run("/file *.txt")
        with pytest.raises(AttachError, match="binary"):
            commands.run("/file cat.png blob.bin")  # all or none
    assert [a.name for a in commands.attached.files] == ["b.txt", "notes.txt"]
    commands.run("/file")
    commands.run("/file -")
    assert commands.attached.files == []
    assert out.getvalue().splitlines() == [
        "attached: b.txt (4 B)",
        "attached: notes.txt (27 B)",
        "  sent with the next question · /file lists them · /file - drops them",
        "  b.txt (4 B)",
        "  notes.txt (27 B)",
        "  sent with the next question · /file lists them · /file - drops them",
        "Dropped the attached files (2).",
    ]


# -- the CLI ------------------------------------------------------------------------------
def run_chat(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHAT, *args], env=chat_env(tmp_path, url), cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_attach_flag_sends_the_file_with_a_one_shot_question(fake: FakeServer, files: Path) -> None:
    result = run_chat(files, fake.url, "-a", "notes.txt", "--attach", "cat.png", "Explain")
    assert result.returncode == 0, result.stderr
    content = user_content(fake)
    assert content[0]["text"].startswith("Explain\n\nnotes.txt:\n")
    assert content[1]["type"] == "image_url"


def test_attach_flag_refuses_a_binary_file_in_one_line_before_connecting(
    fake: FakeServer, files: Path
) -> None:
    result = run_chat(files, fake.url, "-a", "blob.bin", "Explain")
    assert result.returncode == 1
    assert result.stderr.startswith("chat: cannot attach blob.bin: it is binary (600 B)")
    assert result.stderr.count("\n") == 1 and not fake.state.requests


def test_a_file_name_with_escapes_is_shown_not_run(fake: FakeServer, files: Path) -> None:
    name = "evil\x1b]0;owned\x07.txt"
    (files / name).write_text("hi\n")
    out = io.StringIO()
    commands = Commands(session_for(fake, files), out, files / "conversations")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(files)
        commands.run("/file evil*")
    assert "\x1b" not in out.getvalue() and "evil^[]0;owned^G.txt" in out.getvalue()


def test_repl_file_then_question_then_resume_keeps_the_file(
    fake: FakeServer, files: Path, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    env = chat_env(files, fake.url)
    child = spawn_chat(env=env, timeout=STEP_S)
    child.expect(PROMPT_READY)
    child.send("/file notes.txt\r")
    child.expect_exact("attached: notes.txt (27 B)")
    child.expect(PROMPT_READY)
    child.send("What is it?\r")
    child.expect("tok/s")
    assert "with notes.txt (27 B)" in visible(child.before)
    child.expect(PROMPT_READY)
    assert user_content(fake).startswith("What is it?\n\nnotes.txt:\n````\n")
    child.send("Again, shorter\r")
    child.expect("tok/s")
    child.expect(PROMPT_READY)
    assert user_content(fake) == "Again, shorter"  # the file went with one question
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0

    result = run_chat(files, fake.url, "--resume", "and then?")
    assert result.returncode == 0, result.stderr
    first = fake.state.requests[-1]["messages"][0]
    assert first["role"] == "user" and "notes.txt:\n````\nfirst line" in first["content"]
    [saved] = (files / "data" / "mixvllm" / "conversations").glob("*.json")
    stored = json.loads(saved.read_text())["messages"][0]["attachments"]
    assert stored[0]["name"] == "notes.txt" and stored[0]["kind"] == "text"


# -- the browser terminal's round trip (chat's side; the server's: test_terminal_files.py) ----
def test_a_drop_is_announced_at_the_prompt_and_download_offers_a_ticket_not_a_path(
    fake: FakeServer, files: Path, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    folder = files / "session-folder"
    folder.mkdir(mode=0o700)
    env = chat_env(files, fake.url, MIXVLLM_SESSION="s1", MIXVLLM_CHAT_EXPORT=str(folder))
    child = spawn_chat(env=env, timeout=STEP_S)
    child.expect(PROMPT_READY)
    # What the server leaves when a file is dropped on the page (file_handlers.py).
    notice = folder / "dropped-1.json"
    notice.write_text(json.dumps({"name": "my notes.txt", "size": 2048, "dir": str(files)}))
    child.expect_exact("dropped: my notes.txt (2.0 KB) \u2014 /file 'my notes.txt' to attach")
    child.expect(PROMPT_READY)
    wait_for(lambda: not notice.exists(), STEP_S, "the notice taken")  # said once

    child.send("/download notes.txt\r")
    child.expect(r"\x1b\]7337;download;([A-Za-z0-9_-]+);([A-Za-z0-9+/=]*)\x07")
    ticket, name = child.match.group(1), child.match.group(2)
    child.expect_exact("download: notes.txt (27 B)")
    assert base64.b64decode(name) == b"notes.txt"
    offered = json.loads((folder / f"download-{ticket}.json").read_text())
    assert offered == {"path": str(files / "notes.txt")}
    child.expect(PROMPT_READY)
    child.send("/download nothing-here\r")
    child.expect_exact("cannot offer nothing-here: No such file or directory")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0


def test_download_outside_the_browser_terminal_is_one_line(fake: FakeServer, files: Path) -> None:
    out = io.StringIO()
    commands = Commands(session_for(fake, files), out, files / "conversations")
    with pytest.raises(errors.ChatError, match="browser terminal only"):
        commands.run("/download notes.txt")
    assert out.getvalue() == ""


def test_attach_flag_in_the_repl_goes_with_the_first_question(
    fake: FakeServer, files: Path, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    child = spawn_chat("-a", "*.txt", env=chat_env(files, fake.url), timeout=STEP_S)
    child.expect_exact("Attached b.txt (4 B), notes.txt (27 B): sent with the first question")
    child.expect(PROMPT_READY)
    child.send("Compare them\r")
    child.expect("tok/s")
    child.expect(PROMPT_READY)
    assert user_content(fake) == (
        "Compare them\n\nb.txt:\n```\nbee\n```\n\nnotes.txt:\n````\nfirst line\nuses ``` "
        "fences\n````"
    )
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0


def test_attach_is_a_flag_only_never_a_key_of_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "chat.toml"
    config_file.write_text('attach = ["secrets.txt"]\n')
    with pytest.raises(errors.ConfigError, match="unknown keys attach"):
        load_config(["--config", str(config_file)], {})
    assert load_config(["-a", "a.txt", "--attach", "*.py"], {}).attach == ("a.txt", "*.py")
