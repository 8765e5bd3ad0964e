"""The REPL driven through a real PTY: typing, paste, Ctrl-C, Ctrl-D, slash commands."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from tests.chat_support import (
    PROMPT_READY,
    chat_env,
    conversations,
    exit_status,
    fake_server,
    visible,
)
from tests.fake_openai import DEFAULT_ANSWER, FakeServer, chunk
from tests.support import wait_for

# Generous deadlines: the machine is shared and noisy; the bench measures speed, not these.
STEP_S = 30


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server


@pytest.fixture
def chat(
    spawn_chat: Callable[..., pexpect.spawn], tmp_path: Path, fake: FakeServer
) -> Callable[..., pexpect.spawn]:
    """`chat(*args)`: chat against the fake server, by default once it shows its prompt."""

    def start(*args: str, ready: bool = True) -> pexpect.spawn:
        child = spawn_chat(*args, env=chat_env(tmp_path, fake.url), timeout=STEP_S)
        if ready:
            child.expect(PROMPT_READY)
        return child

    return start


def ask(child: pexpect.spawn, text: str) -> str:
    child.send(text + "\r")
    child.expect("tok/s")
    answer = visible(child.before)
    child.expect(PROMPT_READY)
    return answer


def exit_with_ctrl_d(child: pexpect.spawn) -> int:
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    return exit_status(child)


def last_saved(tmp_path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(conversations(tmp_path)[-1].read_text())
    return data


def test_type_a_question_see_markdown_and_exit_with_ctrl_d(
    tmp_path: Path, fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat()
    assert f"Connected to {fake.url}/v1 · model fake-model" in visible(child.before)
    shown = ask(child, "hello there")
    assert "Hello there! This is a test answer." in shown and "**" not in shown
    assert "• one" in shown
    assert fake.state.requests[-1]["messages"] == [{"role": "user", "content": "hello there"}]
    assert exit_with_ctrl_d(child) == 0
    history_file = tmp_path / "state" / "mixvllm" / "chat_history"
    assert "+hello there" in history_file.read_text()
    assert history_file.stat().st_mode & 0o777 == 0o600
    assert [m["role"] for m in last_saved(tmp_path)["messages"]] == ["user", "assistant"]  # type: ignore[index, union-attr]


def test_paste_keeps_newlines_and_alt_enter_inserts_one(
    fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat()
    child.send("\x1b[200~line one\nline two\x1b[201~")
    ask(child, "")
    assert fake.state.requests[-1]["messages"][-1]["content"] == "line one\nline two"
    child.send("first")
    child.send("\x1b\r")  # Alt-Enter
    ask(child, "second")
    assert fake.state.requests[-1]["messages"][-1]["content"] == "first\nsecond"
    assert exit_with_ctrl_d(child) == 0


def test_ctrl_c_stops_the_answer_keeps_it_and_returns_to_the_prompt(
    tmp_path: Path, fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat()
    child.send("tell me @fault:slow\r")
    child.expect("word word")
    child.sendintr()
    child.expect(r"\[interrupted\]", timeout=3)
    child.expect(PROMPT_READY, timeout=3)
    saved = last_saved(tmp_path)["messages"][-1]  # type: ignore[index]
    assert saved["incomplete"] == "interrupted"
    assert saved["content"].startswith("word word")

    # Ctrl-C at the prompt clears the line; the conversation goes on with the partial answer.
    child.send("typo")
    child.sendcontrol("c")
    child.expect(PROMPT_READY)
    ask(child, "next")
    sent = fake.state.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == saved["content"] and sent[2]["content"] == "next"
    assert exit_with_ctrl_d(child) == 0


def test_errors_are_one_line_and_the_next_prompt_works(
    fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat()
    child.send("q @fault:http500\r")
    child.expect("try /retry")
    assert "✗ the model server failed (500 Internal Server Error: engine crashed" in visible(
        child.before
    )
    child.expect(PROMPT_READY)
    child.send("/retry\r")  # the same question again: it fails again, the same way
    child.expect("try /retry")
    child.expect(PROMPT_READY)
    assert "Traceback" not in visible(child.before)
    ask(child, "fine now")
    assert [m["content"] for m in fake.state.requests[-1]["messages"]] == ["fine now"]
    assert exit_with_ctrl_d(child) == 0


def test_slash_commands_completion_copy_and_set(
    fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat()
    ask(child, "hello")
    child.send("/cop")
    child.send("\t")
    child.send("\r")
    payload = base64.b64encode(DEFAULT_ANSWER.encode()).decode()
    child.expect_exact(f"\x1b]52;c;{payload}\x07")
    child.expect("Sent the last answer .* as an OSC 52 clipboard request")
    child.expect(PROMPT_READY)
    child.send("/set temperature 0.25\r")
    child.expect("temperature = 0.25")
    child.expect(PROMPT_READY)
    ask(child, "again")
    assert fake.state.requests[-1]["temperature"] == 0.25
    child.send("/exit\r")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0


def test_resume_continues_after_a_restart(
    tmp_path: Path, fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat()
    ask(child, "remember me")
    assert exit_with_ctrl_d(child) == 0
    child = chat("--resume")
    assert "Resumed" in visible(child.before)
    ask(child, "still there?")
    sent = [m["content"] for m in fake.state.requests[-1]["messages"]]
    assert sent == ["remember me", DEFAULT_ANSWER, "still there?"]
    assert exit_with_ctrl_d(child) == 0
    wait_for(lambda: len(conversations(tmp_path)) == 1)


def test_ctrl_c_in_one_shot_mode_keeps_the_partial_answer(
    tmp_path: Path, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat("tell me @fault:slow", "--resume", ready=False)  # --resume: saved
    child.expect("word word")
    child.sendintr()
    child.expect(r"\[interrupted\]", timeout=3)
    child.expect(pexpect.EOF)
    assert exit_status(child) == 130
    saved = last_saved(tmp_path)["messages"][-1]  # type: ignore[index]
    assert saved["incomplete"] == "interrupted" and saved["content"].startswith("word word")


def test_ctrl_c_before_the_first_word_in_one_shot_mode_exits_130(
    fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat("@fault:hang", ready=False)
    wait_for(lambda: len(fake.state.requests) == 1)
    child.sendintr()
    child.expect(pexpect.EOF)
    assert exit_status(child) == 130
    assert "[interrupted]" in visible(child.before)


def test_ctrl_c_before_the_first_word_keeps_the_question_for_retry(
    fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat()
    child.send("wait @fault:hang\r")
    wait_for(lambda: len(fake.state.requests) == 1)
    child.sendintr()
    child.expect(r"\[interrupted\]", timeout=3)
    child.expect(PROMPT_READY, timeout=3)
    fake.state.release.set()
    ask(child, "/retry")
    assert fake.state.requests[-1]["messages"] == [{"role": "user", "content": "wait @fault:hang"}]
    assert exit_with_ctrl_d(child) == 0


def test_a_killed_chat_leaves_the_answer_so_far_in_the_autosave(
    tmp_path: Path, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat()
    child.send("tell me @fault:slow\r")
    child.expect("word word")

    def partial_saved() -> bool:
        files = conversations(tmp_path)
        if not files:
            return False
        messages = json.loads(files[-1].read_text())["messages"]
        return len(messages) == 2 and messages[-1]["incomplete"] == "in progress"

    wait_for(partial_saved, timeout=STEP_S)
    child.kill(9)  # a closed browser tab or a kill: no chance to clean up
    child.close()
    saved = last_saved(tmp_path)["messages"][-1]  # type: ignore[index]
    assert saved["content"].startswith("word ")


def test_plain_mode_prints_the_raw_markdown(chat: Callable[..., pexpect.spawn]) -> None:
    child = chat("--plain")
    shown = ask(child, "hello")
    assert "Hello **there**! This is a test answer." in shown and "- one" in shown
    assert exit_with_ctrl_d(child) == 0


def test_words_show_while_the_stream_pauses(chat: Callable[..., pexpect.spawn]) -> None:
    """Three words arrive at once, then nothing: they must show without waiting for a fourth
    (redraws are throttled to one per 80 ms, so they arrive before the next redraw is due);
    a resize during the pause redraws them at once."""
    child = chat("--timeout", "300")
    child.send("question @fault:stall\r")
    child.expect(r"Hello \S*there\S*! This", timeout=10)  # long before the 300 s stall timeout
    # A resize redraws the live tail for the new width at once, still with no new token.
    child.setwinsize(40, 60)
    child.expect(r"\x1b\[\?2026h.*Hello \S*there\S*! This", timeout=10)
    child.sendintr()
    child.expect(r"\[interrupted\]")
    child.expect(PROMPT_READY)
    assert exit_with_ctrl_d(child) == 0


def test_keys_typed_during_an_answer_are_not_echoed_into_it(
    fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    """The terminal's echo of a key (and of Enter, a line feed) would land in the live region
    and push it down a row under the renderer's feet; the keys wait for the next prompt."""
    fake.state.answer = "Streaming slowly. " * 60 + "\n"
    fake.state.token_delay = 0.02
    child = chat()
    child.send("go\r")
    child.expect("Streaming slowly")
    child.send("typed ahead\r")
    child.expect("tok/s")
    assert "typed ahead" not in visible(child.before)
    child.expect(PROMPT_READY)
    child.expect("typed ahead")  # kept for the next question
    child.sendcontrol("c")
    assert exit_with_ctrl_d(child) == 0


def test_a_line_typed_while_chat_waits_for_the_model_is_sent_at_the_prompt(
    fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    """The browser terminal starts `chat --wait`: a user who types a line and Enter before the
    prompt is up must get it sent, not a newline in the input (the tty maps CR to LF)."""
    fake.state.loading_until = time.monotonic() + 3.0
    child = chat("--wait", "30", ready=False)
    child.expect("waiting")  # /v1/models answers 503: chat waits for the loading model
    child.send("/system\r")
    child.expect(PROMPT_READY)
    assert "/system" not in visible(child.before)  # not echoed over the progress line
    child.expect("System prompt:")
    assert exit_with_ctrl_d(child) == 0


@pytest.mark.parametrize("word", ["exit", "quit", " Exit "])
def test_exit_or_quit_alone_on_a_line_exits(
    word: str, fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat()
    child.send(word + "\r")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0
    assert fake.state.requests == []  # not sent to the model


def test_named_conversation_survives_a_restart_and_quit_works(
    tmp_path: Path, fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat()
    ask(child, "remember the trip")
    child.send("/s trip\r")
    child.expect("/s could be /save, /search, /server, /set, /stats, /system")
    child.expect(PROMPT_READY)
    child.send("/save trip\r")
    child.expect("Saved as trip")
    child.expect(PROMPT_READY)
    child.send("/quit\r")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0
    assert [p.name for p in conversations(tmp_path)] == ["trip.json"]
    child = chat("--resume", "trip")
    assert "Resumed trip (2 messages)" in visible(child.before)
    child.send("/chats\r")
    child.expect(r"\* trip  .*  2 messages  remember the trip")
    child.expect(PROMPT_READY)
    child.send("/bye\r")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0


def test_a_huge_paste_shows_as_one_line_and_is_sent_whole(
    tmp_path: Path, fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    child = chat()
    pasted = "".join(f"log line {i:06} with a few words in it\n" for i in range(30_000))
    child.send("summarise ")
    child.send("\x1b[200~" + pasted + "\x1b[201~")
    child.expect(r"\[pasted text #1: 1,170,000 characters, 30,000 lines\]")
    ask(child, " please")
    assert fake.state.requests[-1]["messages"][-1]["content"] == f"summarise {pasted} please"
    # A short paste stays as it is, to read and edit.
    child.send("\x1b[200~short paste\x1b[201~")
    child.expect("short paste")
    ask(child, "")
    assert fake.state.requests[-1]["messages"][-1]["content"] == "short paste"
    assert exit_with_ctrl_d(child) == 0
    # The placeholder would mean nothing in a later session: only the short line is kept.
    (history,) = tmp_path.rglob("chat_history")
    kept = history.read_text()
    assert "short paste" in kept and "pasted text #" not in kept


def test_ctrl_c_while_a_huge_chunk_is_drawn_keeps_what_the_screen_shows(
    tmp_path: Path, fake: FakeServer, chat: Callable[..., pexpect.spawn]
) -> None:
    """One server chunk of a megabyte: Ctrl-C stops the drawing part-way (the rest would
    take many seconds to format), and the conversation keeps the part that was drawn."""
    big = "".join(
        f"Paragraph {i:05} of a huge answer, with **bold** words.\n\n" for i in range(20_000)
    )
    fake.state.raw_sse = (
        chunk({"role": "assistant", "content": ""})
        + chunk({"content": big})
        + chunk({}, "stop")
        + b"data: [DONE]\n\n"
    )
    child = chat()
    child.send("go\r")
    child.expect("Paragraph 00001")
    child.sendintr()
    child.expect(r"\[interrupted\]")
    shown = visible(child.before)
    child.expect(PROMPT_READY)
    kept = last_saved(tmp_path)["messages"][-1]  # type: ignore[index]
    assert kept["incomplete"] == "interrupted"
    assert 0 < len(kept["content"]) < len(big) and big.startswith(kept["content"])
    last = re.findall(r"Paragraph \d{5}", kept["content"])[-1]
    assert last in shown, "the answer kept ends where the screen does"
    ask(child, "next")  # the conversation goes on
    assert exit_with_ctrl_d(child) == 0
