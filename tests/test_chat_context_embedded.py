"""The context window against the REAL embedded model (llama.cpp + SmolLM2), in a real PTY.

llama.cpp's server reports the context of each slot in /props and its usage in every answer,
streamed or not: chat's figures are the server's. The tests that fill the context run the
same engine with SMALL tokens a slot.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from chat_cli.api import context
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
from tests.embedded_server import EmbeddedServer, run_embedded

# A shared, loaded machine runs the 135M model at a few tokens a second: minutes, not seconds.
pytestmark = [pytest.mark.embedded, pytest.mark.timeout(300)]

STEP_S = 120  # a shared, loaded machine runs the 135M model at a few tokens a second
FOOTER = re.compile(
    r"(~?)(\d+) prompt \+ ~?(\d+) completion tokens · [\d.]+ s · context (~?)([\d,]+)/([\d,]+) "
    r"\((\d+) %\)"
)
LONG = "apple banana cherry " * 60  # 1,200 characters: 400 tokens by chat's estimate
SMALL = 512  # tokens a slot; llama.cpp rounds a slot's context up to a multiple of 256


@pytest.fixture(scope="module")
def small_server(
    embedded_model_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    """The embedded engine as `MAX_MODEL_LEN=512 make run` starts it."""
    with run_embedded(tmp_path_factory.mktemp("small"), {"MAX_MODEL_LEN": str(SMALL)}) as server:
        yield server


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


def test_chat_counts_with_the_engines_own_tokenizer(embedded_model_server: Any) -> None:
    # llama-server answers vLLM's form of /tokenize with no tokens: chat tries its own form.
    server = embedded_model_server
    tokenizer = context.Tokenizer(server.base_url, server.api_key)
    assert tokenizer.count(server.model, "apple apple apple apple") == 4
    once, twice = tokenizer.count(server.model, LONG), tokenizer.count(server.model, LONG * 2)
    assert once is not None and twice is not None
    assert once >= 180 and abs(twice - 2 * once) <= 1  # 180 words, a token each


def test_the_footer_shows_the_share_of_the_context_after_an_exchange(
    tmp_path: Path, embedded_model_server: Any, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    # No --context-length: the length is the server's (/props), the usage its own count,
    # streamed or not.
    for streamed in ([], ["--no-stream"]):
        child = start(spawn_chat, tmp_path, embedded_model_server, "--max-tokens", "8", *streamed)
        shown = " ".join(ask(child, "What is 2 + 2?").split())
        found = FOOTER.search(shown)
        assert found, shown
        approx, prompt, completion, approx_share, used, limit, share = found.groups()
        assert approx == approx_share == "" and limit == "4,096", shown
        assert int(used.replace(",", "")) == int(prompt) + int(completion)
        assert int(share) == math.floor(100 * (int(prompt) + int(completion)) / 4096)
        quit_chat(child)


def test_a_conversation_that_no_longer_fits_is_refused_and_trim_makes_it_fit(
    tmp_path: Path, small_server: EmbeddedServer, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    child = start(spawn_chat, tmp_path, small_server, "--max-tokens", "8")
    ask(child, "Say hi.")
    ask(child, "Repeat: " + LONG)
    too_long = "Count the fruits: " + LONG * 2
    shown = " ".join(ask(child, too_long).split())
    assert "✗ not sent: it would not fit the model's context" in shown, shown
    assert f"the context holds {SMALL}" in shown and "/trim" in shown and "/compact" in shown
    assert "tok/s" not in shown  # no request, no answer
    shown = " ".join(ask(child, "/trim").split())
    assert "Dropped the 2 oldest exchanges (4 messages)" in shown, shown
    assert "/retry sends the message that did not fit" in shown
    found = FOOTER.search(" ".join(ask(child, "/retry").split()))
    assert found, "no answer after /retry"
    assert found.group(6) == str(SMALL) and int(found.group(5).replace(",", "")) <= SMALL
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


def _used_by_one_exchange(tmp_path: Path, server: Any, question: str) -> int:
    """What `question` and a one-token answer take of the context: the server's own count."""
    env = chat_env(tmp_path, server.base_url, VLLM_API_KEY=server.api_key)
    result = subprocess.run(
        [*CHAT, "--json", "--no-stream", "--max-tokens", "1", "--seed", "1", "--temperature",
         "0", question],
        env=env, capture_output=True, text=True, timeout=STEP_S, check=True,
    )  # fmt: skip
    usage = json.loads(result.stdout)["usage"]
    assert not usage["estimated"]
    return int(usage["prompt_tokens"]) + int(usage["completion_tokens"])


def test_the_share_turns_yellow_at_75_and_red_at_90_percent_on_screen(
    tmp_path: Path, small_server: EmbeddedServer, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    # The answer fills the context: this question runs the model to --max-tokens at
    # temperature 0 (the 135M model ends at once on a prompt padded with filler).
    question = "Write a long story about a lighthouse keeper."
    prompt = _used_by_one_exchange(tmp_path, small_server, question) - 1
    for share, colour in (
        (0.50, "default"),  # dim, as the rest of the footer
        (0.82, "brown"),  # yellow (pyte names SGR 33 brown)
        (0.95, "red"),
    ):
        max_tokens = math.floor(share * SMALL) - prompt
        screen = XtermScreen(120, 40)
        child = start(
            spawn_chat, tmp_path, small_server, "--no-stream", "--max-tokens", str(max_tokens)
        )
        screen.feed(child.before + child.after)
        child.send(question + "\r")
        child.expect(PROMPT_READY)
        screen.feed(child.before + child.after)
        quit_chat(child)
        rows = [_text(screen, y) for y in range(screen.lines)]
        y = next((y for y, text in enumerate(rows) if "· context " in text), -1)
        assert y >= 0, (share, "\n".join(r.rstrip() for r in rows if r.strip()))
        found = re.search(rf"context (\d+)/{SMALL} \((\d+) %\)", rows[y])
        used = math.floor(share * SMALL)  # the question and the whole answer
        assert found and found.groups() == (str(used), str(100 * used // SMALL)), rows[y]
        start_x = found.start()
        shown = found.group(0).split(" (")[0]
        assert {screen.buffer[y][x].fg for x in range(start_x, start_x + len(shown))} == {colour}, (
            share,
            rows[y],
        )
        assert screen.buffer[y][0].fg == "default"  # the footer's start: dim, as ever


def _text(screen: XtermScreen, y: int) -> str:
    return "".join(screen.buffer[y][x].data for x in range(screen.columns))
