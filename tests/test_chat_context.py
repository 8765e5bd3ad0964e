"""The context window: its length as each server reports it, the footer's share, requests
refused before they are sent, /trim and /compact; against the fault-injecting server."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from chat_cli import chats, errors
from chat_cli.api import context
from chat_cli.api.client import ChatClient, Sampling
from chat_cli.commands import Commands
from chat_cli.compact import COMPACT_REQUEST, exchanges
from chat_cli.context_window import ContextWindow
from chat_cli.conversation import Conversation, Message
from chat_cli.errors import ChatError
from chat_cli.render.plain import PlainRenderer, context_share
from chat_cli.session import Session
from tests.chat_support import (
    CHAT,
    PROMPT_READY,
    chat_env,
    closed_port_url,
    conversations,
    exit_status,
    fake_server,
    visible,
)
from tests.fake_openai import DEFAULT_ANSWER, MODEL, FakeServer, tokens

ANSWER_TOKENS = len(tokens(DEFAULT_ANSWER))  # the fake's usage counts its pieces
LLAMA_SERVER_META = {"meta": {"n_ctx_train": 8192, "n_vocab": 49152}}


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server(scenario="usage") as server:
        yield server


def window_of(fake: FakeServer, configured: int | None = None) -> ContextWindow:
    return ContextWindow.of_server(fake.url + "/v1", None, MODEL, configured)


def session_of(fake: FakeServer, tmp_path: Path, **sampling: Any) -> Session:
    conversation = Conversation(path=chats.new_autosave_path(tmp_path / "conversations"))
    client = ChatClient(fake.url + "/v1", None, 10.0)
    return Session(client, conversation, Sampling(MODEL, **sampling), window=window_of(fake))


def ask(session: Session, text: str) -> str:
    out = io.StringIO()
    session.ask(text, PlainRenderer(out, footer=False, styled=False))
    return out.getvalue()


# -- the footer's share --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens_used", "level", "shown"),
    [
        (0, None, "context 0/1,000 (0 %)"),
        (749, None, "context 749/1,000 (74 %)"),
        (750, "warn", "context 750/1,000 (75 %)"),
        (899, "warn", "context 899/1,000 (89 %)"),  # floored: below the red line, it says so
        (900, "full", "context 900/1,000 (90 %)"),
        (1200, "full", "context 1,200/1,000 (120 %)"),
    ],
)
def test_the_share_turns_yellow_at_75_and_red_at_90_percent(
    tokens_used: int, level: str | None, shown: str
) -> None:
    assert context_share(tokens_used, 1000, approx=False) == (shown, level)


def test_an_estimated_share_says_so() -> None:
    assert context_share(10, 100, approx=True)[0] == "context ~10/100 (10 %)"


# -- the context's length, as each server reports it ----------------------------------------


def test_vllm_reports_max_model_len(fake: FakeServer) -> None:
    fake.state.model_fields = {"max_model_len": 32768}
    assert window_of(fake, configured=100).limit == 32768  # the server's own figure wins


def test_llama_server_reports_its_context_in_props(fake: FakeServer) -> None:
    fake.state.model_fields = LLAMA_SERVER_META
    fake.state.props = {"default_generation_settings": {"n_ctx": 2048}, "total_slots": 1}
    assert window_of(fake, configured=100).limit == 2048


def test_llama_server_without_props_falls_back_to_the_setting_then_the_training_context(
    fake: FakeServer,
) -> None:
    fake.state.model_fields = LLAMA_SERVER_META
    assert window_of(fake, configured=3000).limit == 3000
    assert window_of(fake).limit == 8192


def test_a_server_that_reports_nothing_has_no_share(fake: FakeServer, tmp_path: Path) -> None:
    assert window_of(fake, configured=4096).limit == 4096
    session = session_of(fake, tmp_path)
    assert session.window is not None and session.window.limit is None
    ask(session, "hello")  # nothing refused, nothing breaks
    out = io.StringIO()
    renderer = PlainRenderer(out, footer=True, styled=False, context_limit=session.window.limit)
    assert session.last_answer is not None
    renderer.finish(session.last_answer, None)
    assert "tok/s" in out.getvalue() and "context" not in out.getvalue()


@pytest.mark.parametrize(
    "body",
    [
        {"data": "not a list"},
        {"data": [{"id": MODEL, "max_model_len": "4096"}]},
        {"data": [{"id": MODEL, "max_model_len": True}]},
        {"data": [{"id": MODEL, "max_model_len": -1}]},
        {"data": [{"id": "another", "max_model_len": 4096}]},
        ["x"],
        "not json at all",
    ],
)
def test_odd_model_listings_leave_the_context_unknown(fake: FakeServer, body: Any) -> None:
    fake.state.models_body = body
    assert window_of(fake).limit is None


def test_an_unreachable_or_failing_server_leaves_the_context_unknown(fake: FakeServer) -> None:
    assert context.reported(closed_port_url() + "/v1", None, MODEL) == context.Reported()
    fake.state.loading_until = float("inf")  # /v1/models answers 503
    assert window_of(fake).limit is None


def test_the_tokenizer_counts_when_the_server_has_one(fake: FakeServer) -> None:
    fake.state.tokenize_count = 3
    tokenizer = context.Tokenizer(fake.url + "/v1", None)
    assert tokenizer.count(MODEL, "some text") == 3
    assert tokenizer.count(MODEL, "more text") == 3
    assert fake.state.tokenized == ["some text", "more text"]  # vLLM's form answered at once


def test_a_server_without_a_tokenizer_is_asked_once(fake: FakeServer) -> None:
    tokenizer = context.Tokenizer(fake.url + "/v1", None)
    assert tokenizer.count(MODEL, "some text") is None
    assert len(fake.state.tokenized) == len(context.Tokenizer.VARIANTS)  # each form, once
    fake.state.tokenize_count = 3
    assert tokenizer.count(MODEL, "some text") is None
    assert len(fake.state.tokenized) == len(context.Tokenizer.VARIANTS)


# -- refused before sending -----------------------------------------------------------------


def test_usage_counts_the_conversation_exactly_and_new_text_high(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.state.model_fields = {"max_model_len": 10_000}
    fake.state.prompt_tokens = 40
    session = session_of(fake, tmp_path)
    window = session.window
    assert window is not None
    ask(session, "hello")
    messages = session.conversation.api_messages()
    assert window.used(messages) == 40 + ANSWER_TOKENS
    new = [*messages, {"role": "user", "content": "x" * 300}]
    assert window.used(new) == 40 + ANSWER_TOKENS + 100 + 8
    session.conversation.system = "be brief"  # the measured request changed: all estimated
    assert window.used(session.conversation.api_messages()) > 40


def test_a_question_that_would_not_fit_is_not_sent_and_waits_for_retry(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.state.model_fields = {"max_model_len": 200}
    fake.state.prompt_tokens = 150
    session = session_of(fake, tmp_path, max_tokens=20)
    ask(session, "hello")
    before = list(session.conversation.messages)
    sent = len(fake.state.requests)
    with pytest.raises(errors.WontFit) as info:
        ask(session, "and now a longer question " * 4)
    assert len(fake.state.requests) == sent  # the server never saw it
    line = str(info.value)
    assert line.startswith("not sent: it would not fit the model's context")
    assert "the context holds 200" in line and "20 for the answer" in line
    assert "/trim" in line and "/compact" in line and "/retry" in line
    assert session.conversation.messages == before
    waiting = session.retry()
    assert waiting is not None and waiting.content == "and now a longer question " * 4


def test_the_servers_tokenizer_has_the_last_word_on_a_close_call(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.state.model_fields = {"max_model_len": 200}
    fake.state.prompt_tokens = 100
    session = session_of(fake, tmp_path, max_tokens=20)
    ask(session, "hello")
    question = "y" * 210  # 70 tokens at three characters a token: 100 + 13 + 78 + 20 > 200
    fake.state.tokenize_count = 30  # the tokenizer knows better: 100 + 13 + 38 + 20 fits
    sent = len(fake.state.requests)
    ask(session, question)
    assert len(fake.state.requests) == sent + 1
    assert fake.state.tokenized == [question]
    fake.state.tokenize_count = 500
    with pytest.raises(errors.WontFit):
        ask(session, question)


def test_without_usage_the_footer_counts_what_the_tokenizer_counted(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.state.scenario = "ok"  # no usage, as llama-cpp-python when it streams
    fake.state.model_fields = {"max_model_len": 200}
    fake.state.tokenize_count = 30
    session = session_of(fake, tmp_path, max_tokens=20)
    ask(session, "z" * 600)  # 200 tokens by the estimate alone: over the limit
    usage = session.last_answer.usage if session.last_answer else None
    assert usage is not None and usage.estimated
    assert usage.prompt_tokens == 30 + 8  # the count, and the message's markers


def test_a_400_for_context_length_names_trim_and_compact_and_keeps_the_conversation(
    fake: FakeServer, tmp_path: Path
) -> None:
    session = session_of(fake, tmp_path)
    ask(session, "hello")
    kept = list(session.conversation.messages)
    with pytest.raises(errors.ContextTooLong) as info:
        ask(session, "more @fault:http400ctx")
    line = str(info.value)
    assert "\n" not in line and "maximum context length is 2048" in line
    assert "/trim drops the oldest turns, /compact summarises them" in line
    assert session.conversation.messages == kept
    assert session.window is not None and session.window.limit == 2048  # learnt from it


@pytest.mark.parametrize(
    ("error", "learnt"),
    [
        ("This model's maximum context length is 2048 tokens. However, you requested 4100", 2048),
        ("Requested tokens (5000) exceed context window of 4096", 4096),  # llama-cpp-python
        ("the request exceeds the available context size, try increasing it", None),
    ],
)
def test_a_context_error_that_names_the_length_teaches_it(error: str, learnt: int | None) -> None:
    window = ContextWindow(MODEL, lambda _: context.Reported(), lambda _, __: None)
    window.learn(error)
    assert window.limit == learnt
    known = ContextWindow(MODEL, lambda _: context.Reported(exact=8192), lambda _, __: None)
    known.learn(error)
    assert known.limit == 8192  # what the server reports stays


# -- /trim and /compact ---------------------------------------------------------------------


@pytest.fixture
def commands(fake: FakeServer, tmp_path: Path) -> tuple[Session, Commands, io.StringIO]:
    session = session_of(fake, tmp_path, max_tokens=20)
    for n in range(3):
        ask(session, f"question {n}")
    out = io.StringIO()
    return session, Commands(session, out, tmp_path / "conversations"), out


def test_exchanges_group_a_question_with_all_that_answered_it() -> None:
    messages = [
        Message("user", "a"),
        Message("assistant", "", tool_calls=[{"id": "1"}]),
        Message("tool", "r", tool_call_id="1", name="t"),
        Message("assistant", "b"),
        Message("user", "c"),
    ]
    assert [len(group) for group in exchanges(messages)] == [4, 1]


def test_trim_n_drops_the_oldest_exchanges_and_keeps_the_system_prompt(
    commands: tuple[Session, Commands, io.StringIO],
) -> None:
    session, run, out = commands
    session.conversation.system = "be brief"
    run.run("/trim 2")
    assert session.conversation.messages[0].content == "question 2"
    assert session.conversation.system == "be brief"
    assert "Dropped the 2 oldest exchanges (4 messages)" in out.getvalue()
    with pytest.raises(ChatError, match="usage: /trim"):
        run.run("/trim some")


def test_trim_alone_needs_a_known_context(commands: tuple[Session, Commands, io.StringIO]) -> None:
    _, run, _ = commands
    with pytest.raises(ChatError, match=r"context length is unknown.*/trim N"):
        run.run("/trim")


def test_trim_alone_drops_enough_for_the_waiting_question(
    fake: FakeServer, commands: tuple[Session, Commands, io.StringIO]
) -> None:
    session, run, out = commands
    fake.state.model_fields = {"max_model_len": 300}
    assert session.window is not None
    session.window.model_changed(MODEL)
    with pytest.raises(errors.WontFit):
        ask(session, "q" * 600)  # 200 tokens, 20 for the answer, the 3 exchanges: too many
    run.run("/trim")
    said = out.getvalue()
    assert "Dropped the 3 oldest exchanges" in said and "/retry sends" in said
    waiting = session.retry()
    assert waiting is not None
    ask(session, waiting.content)
    assert session.conversation.messages[0].content == "q" * 600


def test_trim_drops_fewer_when_the_servers_tokenizer_counts_fewer(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.state.scenario = "ok"  # no usage: nothing measured, all estimated or counted
    window = ContextWindow(
        MODEL, lambda _: context.Reported(exact=400), lambda _, text: len(text) // 5
    )
    session = session_of(fake, tmp_path, max_tokens=20)
    session.window = window
    for n in range(3):
        ask(session, f"{n}" + "w" * 449)
    assert window.used(session.conversation.api_messages()) + 20 > 300  # 75 % of 400
    out = io.StringIO()
    Commands(session, out, tmp_path).run("/trim")
    # By the estimate (3 characters a token) two would go; counted (5), one is enough.
    assert "Dropped the oldest exchange (2 messages)" in out.getvalue()


def test_compact_replaces_older_exchanges_only_once_confirmed(
    commands: tuple[Session, Commands, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    session, run, out = commands
    before = list(session.conversation.messages)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    run.run("/compact")
    assert session.conversation.messages == before and "Nothing replaced." in out.getvalue()
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    run.run("/compact")
    assert [m.content for m in session.conversation.messages] == [
        COMPACT_REQUEST, DEFAULT_ANSWER, *[m.content for m in before[-2:]],
    ]  # fmt: skip


@pytest.mark.parametrize("fault", ["http500", "cut", "http400ctx"])
def test_a_failed_summary_replaces_nothing(
    fake: FakeServer,
    commands: tuple[Session, Commands, io.StringIO],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    session, run, _ = commands
    before = list(session.conversation.messages)
    fake.state.scenario = fault
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    with pytest.raises(ChatError, match="nothing was replaced") as info:
        run.run("/compact")
    assert "\n" not in str(info.value)
    assert session.conversation.messages == before
    assert session.unsent is None  # the summary's request is no question of the user's


def test_compact_needs_older_exchanges(commands: tuple[Session, Commands, io.StringIO]) -> None:
    _, run, _ = commands
    with pytest.raises(ChatError, match="nothing to compact: the conversation has 3 exchanges"):
        run.run("/compact 3")


# -- what the user sees, in a real PTY ------------------------------------------------------


@pytest.fixture
def repl(
    spawn_chat: Callable[..., pexpect.spawn], tmp_path: Path, fake: FakeServer
) -> Iterator[pexpect.spawn]:
    child = spawn_chat(env=chat_env(tmp_path, fake.url), timeout=30)
    child.expect(PROMPT_READY)
    yield child
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0


def pty_ask(child: pexpect.spawn, text: str) -> str:
    child.send(text + "\r")
    child.expect(PROMPT_READY)
    return " ".join(visible(child.before).split())


def test_without_a_reported_context_the_footer_shows_no_share(repl: pexpect.spawn) -> None:
    shown = pty_ask(repl, "hello")
    assert "tok/s" in shown and "context" not in shown
    shown = pty_ask(repl, "/trim")
    assert "✗ the model's context length is unknown" in shown and "Traceback" not in shown
    assert "Dropped the oldest exchange (2 messages)." in pty_ask(repl, "/trim 1")


def test_a_400_for_the_context_is_one_line_naming_trim_and_compact(
    repl: pexpect.spawn, tmp_path: Path
) -> None:
    pty_ask(repl, "hello")
    repl.send("more @fault:http400ctx\r")
    repl.expect(PROMPT_READY)
    shown = " ".join(visible(repl.before).split())  # one message, wrapped to the terminal
    assert shown.count("✗") == 1 and "Traceback" not in shown
    assert "✗ the conversation no longer fits the model's context (400: This model's" in shown
    assert "/trim drops the oldest turns, /compact summarises them; then /retry sends it" in shown
    assert "[user] hello" in pty_ask(repl, "/history")  # the conversation is kept
    assert "context " in pty_ask(repl, "hi again")  # the limit the error named, learnt


def test_compact_asks_on_the_terminal_and_a_no_replaces_nothing(
    repl: pexpect.spawn, tmp_path: Path
) -> None:
    pty_ask(repl, "first")
    pty_ask(repl, "second")
    saved = conversations(tmp_path)[-1].read_text()
    repl.send("/compact\r")
    repl.expect_exact("Replace the older exchange with this summary? [y/N] ")
    assert "Hello **there**! This is a test answer." in visible(repl.before)  # shown first
    repl.send("no\r")  # echoed, as typed, and Enter ends it
    repl.expect_exact("no\r\n")
    assert "Nothing replaced." in pty_ask(repl, "")
    assert conversations(tmp_path)[-1].read_text() == saved


def test_ctrl_c_during_the_summary_replaces_nothing(
    repl: pexpect.spawn, fake: FakeServer, tmp_path: Path
) -> None:
    pty_ask(repl, "first")
    pty_ask(repl, "second")
    saved = conversations(tmp_path)[-1].read_text()
    fake.state.scenario = "slow"  # streams "word " until the client hangs up
    repl.send("/compact\r")
    repl.expect_exact("Summary of the 1 older exchange")
    repl.expect_exact("word word")
    repl.sendintr()
    repl.expect(PROMPT_READY)
    shown = " ".join(visible(repl.before).split())
    assert "✗ no summary (interrupted); nothing was replaced" in shown
    assert "[y/N]" not in shown
    assert conversations(tmp_path)[-1].read_text() == saved
    fake.state.scenario = "usage"
    history = pty_ask(repl, "/history")
    assert "[user] first" in history and "[user] second" in history


def test_a_one_shot_that_would_not_fit_is_one_line_naming_no_repl_command(
    fake: FakeServer, tmp_path: Path
) -> None:
    result = subprocess.run(
        [*CHAT, "--context-length", "100", "--max-tokens", "10", "summarise: " + "w" * 600],
        env=chat_env(tmp_path, fake.url), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("chat: not sent: it would not fit the model's context")
    assert result.stderr.endswith("; shorten the input or lower --max-tokens\n")
    assert result.stderr.count("\n") == 1 and "/trim" not in result.stderr
    assert fake.state.requests == []
