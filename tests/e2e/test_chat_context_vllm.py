"""The context window against real vLLM (its CPU build, the cpu-vllm profile: 2,048 tokens).

vLLM reports `max_model_len` in /v1/models, the usage of a stream, and serves /tokenize:
chat needs no --context-length, and its share is exact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from chat_cli.api import context
from model_server import profiles
from tests import vllm_cpu
from tests.chat_support import PROMPT_READY, chat_env, exit_status, visible
from tests.conftest import require

# Server start-up counts against the first test's timeout; on 2 busy cores it can take minutes.
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(420)]

PROFILE = "cpu-vllm"
API_KEY = "context-test-key"
FOOTER = re.compile(r"(\d+) prompt \+ (\d+) completion tokens · [\d.]+ s · context ([\d,]+)/2,048")


@pytest.fixture(scope="module")
def server() -> Iterator[vllm_cpu.Server]:
    ok, why = vllm_cpu.installed()
    require(ok, why)
    model = profiles.load(PROFILE).served_model_name
    with vllm_cpu.serve(PROFILE, model, api_key=API_KEY) as running:
        yield running


def test_vllm_reports_its_context_and_counts_tokens(server: vllm_cpu.Server) -> None:
    reported = context.reported(server.base_url, API_KEY, server.model)
    assert reported == context.Reported(exact=2048)
    tokenizer = context.Tokenizer(server.base_url, API_KEY)
    counted = tokenizer.count(server.model, "hello world, " * 10)
    assert counted is not None and 20 <= counted <= 40
    assert tokenizer.count(server.model, "") == 0


def test_the_share_is_exact_and_a_request_over_the_context_is_not_sent(
    server: vllm_cpu.Server, tmp_path: Path, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    env = chat_env(tmp_path, server.base_url, VLLM_API_KEY=API_KEY)
    child = spawn_chat("--max-tokens", "8", "--seed", "1", env=env, timeout=120)
    child.expect(PROMPT_READY)
    child.send("Say hi.\r")
    child.expect(PROMPT_READY)
    shown = " ".join(visible(child.before).split())
    found = FOOTER.search(shown)
    assert found, shown
    prompt, completion, used = found.groups()
    assert int(used) == int(prompt) + int(completion)  # exact: no `~`
    child.send("Count the words: " + "word " * 2100 + "\r")
    child.expect(PROMPT_READY)
    shown = " ".join(visible(child.before).split())
    assert "✗ not sent: it would not fit the model's context" in shown, shown[-500:]
    assert "the context holds 2,048" in shown and "(400:" not in shown
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0
