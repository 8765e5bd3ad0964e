"""The context window against the REAL embedded model (llama.cpp + SmolLM2), in a real PTY.

llama-cpp-python's server reports no context length, so these give chat one with
--context-length (the fallback for such a server), smaller than the server's own 4,096
tokens: the server would take every request, and only chat's own count refuses one.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest

from chat_cli.compact import COMPACT_REQUEST
from tests.chat_support import (
    CHAT,
    PROMPT_READY,
    XtermScreen,
    chat_env,
    conversations,
    exit_status,
    visible,
)

# A shared, loaded machine runs the 135M model at a few tokens a second: minutes, not seconds.
pytestmark = [pytest.mark.embedded, pytest.mark.timeout(300)]

STEP_S = 120  # a shared, loaded machine runs the 135M model at a few tokens a second
FOOTER = re.compile(
    r"(~?)(\d+) prompt \+ ~?(\d+) completion tokens · [\d.]+ s · context (~?)([\d,]+)/([\d,]+) "
    r"\((\d+) %\)"
)
LONG = "apple banana cherry " * 60  # 1,200 characters: 400 tokens by chat's estimate


def start(
    spawn_chat: Callable[..., pexpect.spawn], tmp_path: Path, server: Any, *args: str
) -> pexpect.spawn:
    env = chat_env(tmp_path, server.base_url, VLLM_API_KEY=server.api_key)
    child = spawn_chat("--seed", "1", "--temperature", "0", *args, env=env, timeout=STEP_S)
    child.expect(PROMPT_READY)
    return child


def ask(child: pexpect.spawn, text: str) -> str:
    child.send(text + "\r")
    child.expect(PROMPT_READY)
    return visible(child.before)


def quit_chat(child: pexpect.spawn) -> None:
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0


def test_the_footer_shows_the_share_of_the_context_after_an_exchange(
    tmp_path: Path, embedded_model_server: Any, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    # Not streamed, llama-cpp-python reports the usage: the share is exact.
    child = start(
        spawn_chat, tmp_path, embedded_model_server,
        "--context-length", "4096", "--max-tokens", "8", "--no-stream",
    )  # fmt: skip
    shown = " ".join(ask(child, "What is 2 + 2?").split())
    found = FOOTER.search(shown)
    assert found, shown
    approx, prompt, completion, approx_share, used, limit, share = found.groups()
    assert approx == approx_share == "" and limit == "4,096"
    assert int(used.replace(",", "")) == int(prompt) + int(completion)
    assert int(share) == math.floor(100 * (int(prompt) + int(completion)) / 4096)
    quit_chat(child)
    # Streamed, it reports none: chat's estimate, marked as one.
    child = start(
        spawn_chat, tmp_path, embedded_model_server,
        "--context-length", "4096", "--max-tokens", "4",
    )  # fmt: skip
    found = FOOTER.search(" ".join(ask(child, "What is 2 + 2?").split()))
    assert found and found.group(4) == "~", found
    quit_chat(child)


def test_a_conversation_that_no_longer_fits_is_refused_and_trim_makes_it_fit(
    tmp_path: Path, embedded_model_server: Any, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    child = start(
        spawn_chat, tmp_path, embedded_model_server,
        "--context-length", "600", "--max-tokens", "8",
    )  # fmt: skip
    ask(child, "Say hi.")
    ask(child, "Repeat: " + LONG)
    too_long = "Count the fruits: " + LONG * 2
    shown = " ".join(ask(child, too_long).split())
    assert "✗ not sent: it would not fit the model's context" in shown, shown
    assert "the context holds 600" in shown and "/trim" in shown and "/compact" in shown
    assert "tok/s" not in shown  # no request, no answer
    shown = " ".join(ask(child, "/trim").split())
    assert "Dropped the 2 oldest exchanges (4 messages)" in shown, shown
    assert "/retry sends the message that did not fit" in shown
    found = FOOTER.search(" ".join(ask(child, "/retry").split()))
    assert found, "no answer after /retry"
    assert found.group(6) == "600" and int(found.group(5).replace(",", "")) <= 600
    quit_chat(child)
    saved = json.loads(conversations(tmp_path)[-1].read_text())
    assert saved["messages"][0]["content"] == too_long


def test_compact_replaces_the_older_turns_with_the_summary_once_confirmed(
    tmp_path: Path, embedded_model_server: Any, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    child = start(
        spawn_chat, tmp_path, embedded_model_server,
        "--context-length", "4096", "--max-tokens", "12",
    )  # fmt: skip
    ask(child, "My name is Ada and I like sailing.")
    ask(child, "What is the capital of France?")
    child.send("/compact\r")
    child.expect_exact("Summary of the 1 older exchange (Ctrl-C stops it):")
    child.expect_exact("[y/N] ")
    summary = visible(child.before).strip()
    assert summary
    shown = ask(child, "y")
    assert "Replaced 2 messages with the summary" in " ".join(shown.split())
    quit_chat(child)
    messages = json.loads(conversations(tmp_path)[-1].read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == COMPACT_REQUEST
    assert " ".join(messages[1]["content"].split()) in " ".join(summary.split())
    assert messages[2]["content"] == "What is the capital of France?"


def _used_by_one_exchange(tmp_path: Path, server: Any) -> int:
    """What "Hi" and a one-token answer take of the context: the server's own count."""
    env = chat_env(tmp_path, server.base_url, VLLM_API_KEY=server.api_key)
    result = subprocess.run(
        [*CHAT, "--json", "--no-stream", "--max-tokens", "1", "--seed", "1", "--temperature",
         "0", "Hi"],
        env=env, capture_output=True, text=True, timeout=STEP_S, check=True,
    )  # fmt: skip
    usage = json.loads(result.stdout)["usage"]
    assert not usage["estimated"]
    return int(usage["prompt_tokens"]) + int(usage["completion_tokens"])


def test_the_share_turns_yellow_at_75_and_red_at_90_percent_on_screen(
    tmp_path: Path, embedded_model_server: Any, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    used = _used_by_one_exchange(tmp_path, embedded_model_server)
    assert used >= 20  # the chat template alone: shares of 80 and 95 % land where they should
    for limit, colour in (
        (used * 2, "default"),  # 50 %: dim, as the rest of the footer
        (math.floor(used / 0.8), "brown"),  # 80 %: yellow (pyte names SGR 33 brown)
        (math.floor(used / 0.95), "red"),  # 95 %
    ):
        screen = XtermScreen(120, 40)
        child = start(
            spawn_chat, tmp_path, embedded_model_server,
            "--no-stream", "--max-tokens", "1", "--context-length", str(limit),
        )  # fmt: skip
        screen.feed(child.before + child.after)
        child.send("Hi\r")
        child.expect(PROMPT_READY)
        screen.feed(child.before + child.after)
        quit_chat(child)
        rows = [_text(screen, y) for y in range(screen.lines)]
        y = next(y for y, text in enumerate(rows) if "· context " in text)
        shown = f"context {used}/{limit:,}"
        start_x = rows[y].index(shown)
        assert {screen.buffer[y][x].fg for x in range(start_x, start_x + len(shown))} == {colour}, (
            limit,
            rows[y],
        )
        assert screen.buffer[y][0].fg == "default"  # the footer's start: dim, as ever


def _text(screen: XtermScreen, y: int) -> str:
    return "".join(screen.buffer[y][x].data for x in range(screen.columns))
