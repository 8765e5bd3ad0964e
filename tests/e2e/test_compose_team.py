"""Team mode in docker compose for real: `docker compose -f docker-compose.yml -f
docker-compose.cpu.yml -f deploy/compose.team.yml`, accounts made with the overlay's
`accounts` tool as .env.example says, then two people log in on the login page (PAM in the
container), each session runs as its own account in its 0700 home under the per-user limits,
the admin (by Unix group) sees both and ends the other's session, and the audit log on the
state volume says so; `down -v` leaves nothing. Needs a Docker engine: `make compose-test`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from tests.conftest import require
from tests.embedded_server import free_port
from tests.support import wait_for_async
from tests.team_support import Account, PamStack, say
from tests.terminal_support import Client
from tests.test_terminal_pam import Browser

from .compose_stacks import DOCKER, Stack, docker_available, timed

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

FILES = ("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml",
         "-f", "deploy/compose.team.yml")  # fmt: skip
MAX_PROCESSES = 300


@dataclass(frozen=True)
class TeamCompose(Stack):
    accounts: Path
    alice: Account
    bob: Account


@pytest.fixture(scope="module")
def stack() -> Iterator[TeamCompose]:
    require(docker_available(), f"no Docker engine with Compose v2 ({DOCKER}; make compose-test)")
    port = free_port()
    accounts = Path(tempfile.mkdtemp(prefix="mixvllm-team-accounts-"))
    env = {
        **os.environ,
        "VLLM_API_KEY": secrets.token_urlsafe(24),
        "MIXVLLM_TERMINAL_TOKEN": "ci-" + secrets.token_urlsafe(16),
        "TERMINAL_PUBLISH_PORT": str(port),
        "MODEL_SERVER_PUBLISH_PORT": str(free_port()),
        "MIXVLLM_TEAM_ACCOUNTS": str(accounts),
        "MIXVLLM_TERMINAL_USER_MAX_PROCESSES": str(MAX_PROCESSES),
        "MIXVLLM_TERMINAL_USER_MAX_MEMORY": "1G",
        "MIXVLLM_TERMINAL_AUTOSTART_CHAT": "0",  # a shell: what the test types goes to bash
    }
    home = Path("/home")
    alice = Account("alice", 2000, "pw-alice-" + secrets.token_hex(4), home / "alice")
    bob = Account("bob", 2001, "pw-bob-" + secrets.token_hex(4), home / "bob")
    s = TeamCompose(f"mixvllm-team-{secrets.token_hex(3)}", FILES, f"http://127.0.0.1:{port}/",
                    env["MIXVLLM_TERMINAL_TOKEN"], env, accounts, alice, bob)  # fmt: skip
    try:
        # As .env.example says: accounts first (the password on stdin), then `up`.
        for who in (alice, bob):
            made = s.compose("run", "--rm", "-T", "accounts", "add", who.name,
                             stdin=who.password + "\n")  # fmt: skip
            assert made.returncode == 0, made.stdout + made.stderr
        admin = s.compose("run", "--rm", "-T", "accounts", "group", "mixvllm-admins", "alice")
        assert admin.returncode == 0, admin.stdout + admin.stderr
        listed = s.compose("run", "--rm", "-T", "accounts", "list")
        assert listed.stdout.split() == ["alice", "bob"], listed.stdout + listed.stderr
        shadow = accounts / "shadow"
        assert (shadow.stat().st_mode & 0o777, shadow.stat().st_uid) == (0o600, 0)
        started = time.monotonic()
        up = s.compose("up", "--wait", "--no-build", timeout=400)
        timed("team compose up --wait", started)
        assert up.returncode == 0, up.stdout + up.stderr + s.compose("logs").stdout
        yield s
    finally:
        down = s.compose("down", "-v", "--remove-orphans", "--timeout", "20")
        shutil.rmtree(accounts, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr
        assert s.leftovers() == []


async def _say_slowly(client: Client, command: str, marker: str, timeout: float) -> str:
    """team_support.say with a longer wait (an answer from a CPU model)."""
    start = len(client.output)
    client.type(command + "\r")
    pattern = re.compile(rf"{marker}<([^<>$\\]*)>")
    await wait_for_async(lambda: pattern.search(client.output, start), timeout, marker)
    match = pattern.search(client.output, start)
    assert match is not None
    return match.group(1)


async def _logged_in(stack: TeamCompose, who: Account) -> Browser:
    browser = Browser(cast(PamStack, stack))  # it needs only the URL
    resp = await browser.login(who)
    assert resp.code == 303, resp.body
    assert (await browser.page()).code == 200 and browser.csrf
    return browser


def test_two_people_log_in_to_the_team_stack_and_the_admin_ends_a_session(
    stack: TeamCompose,
) -> None:
    async def body() -> None:
        alice = await _logged_in(stack, stack.alice)
        bob = await _logged_in(stack, stack.bob)
        try:
            mine = await alice.connect()
            at = await say(mine, 'echo "AT<$(id -un) $(pwd) $(stat -c %a .) $(ulimit -u)>"', "AT")
            assert at.split() == ["alice", "/home/alice", "700", str(MAX_PROCESSES)]
            peek = await say(mine, 'echo "PEEK<$(ls /home/bob >/dev/null 2>&1; echo $?)>"', "PEEK")
            assert peek == "2"  # bob's home is his
            # chat answers from the model container, through the pass-through with her key.
            asked = await _say_slowly(
                mine,
                'chat --plain --wait 120 --max-tokens 12 "Say hello." > answer.txt 2>&1;'
                ' echo "CHAT<$? $(wc -w < answer.txt)>"',
                "CHAT",
                timeout=200,
            )
            code, words = asked.split()
            assert code == "0" and int(words) > 0, asked
            his = await bob.connect()
            assert await say(his, 'echo "ME<$(id -un) $(id -Gn)>"', "ME") == "bob bob"

            assert (await bob.fetch("admin")).code == 403
            state: dict[str, Any] = json.loads((await alice.fetch("api/admin/state")).body)
            rows = {r["id"]: r for r in state["sessions"]}
            assert rows[his.session_id]["user"] == "bob"
            assert rows[his.session_id]["processes"] >= 1
            users = {u["name"]: u for u in state["users"]}
            assert {name: u["logins"] for name, u in users.items()} == {"alice": 1, "bob": 1}
            assert users["alice"]["tokens"]["completion_total"] > 0
            end = await alice.fetch(f"api/admin/end?session={his.session_id}", "POST", "",
                                    **{"X-CSRF-Token": alice.csrf})  # fmt: skip
            assert end.code == 204
            assert await his.wait_closed() is not None
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(asyncio.wait_for(body(), 400))  # terminal_support.run's 100 s: too short here
    logs = stack.compose("logs", "terminal-server").stdout
    assert re.search(r"per-user limits: 300 processes \(RLIMIT_NPROC\), RLIMIT_DATA", logs), logs
    audit = stack.compose("exec", "-T", "terminal-server", "cat", "/var/lib/mixvllm/audit.jsonl")
    events = [json.loads(line) for line in audit.stdout.splitlines()]
    assert any(e["event"] == "login" and e["user"] == "alice" for e in events), audit.stdout
    ended = [e for e in events if e["event"] == "admin_end_session"]
    assert [(e["user"], e["owner"]) for e in ended] == [("alice", "bob")]
