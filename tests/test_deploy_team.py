"""deploy/compose.team.yml (team mode in docker compose) against the compose-spec schema, as
compose merges it over docker-compose.yml, and what the schema can't know. The stack for real:
tests/e2e/test_compose_team.py (`make compose-test`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compose_support import checkout, render
from tests.test_deploy_compose import _ResetLoader, validate

ROOT = Path(__file__).resolve().parent.parent
TEAM = ROOT / "deploy" / "compose.team.yml"
ACCOUNT_FILES = ("passwd", "group", "shadow")


@pytest.fixture(scope="module")
def team() -> dict[str, Any]:
    data = yaml.load(TEAM.read_text(), Loader=_ResetLoader)
    assert isinstance(data, dict)
    return data


def test_the_team_overlay_matches_the_compose_spec(tmp_path: Path) -> None:
    # The schema's YAML reader knows no `!override` (compose's merge tag): without it.
    plain = tmp_path / "compose.team.yml"
    plain.write_text(TEAM.read_text().replace("volumes: !override", "volumes:"))
    result = validate(plain)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_terminal_logs_people_in_and_runs_sessions_as_their_accounts(
    team: dict[str, Any],
) -> None:
    svc = team["services"]["terminal-server"]
    env = svc["environment"]
    assert env["MIXVLLM_TERMINAL_AUTH"] == "${MIXVLLM_TERMINAL_AUTH:-pam}"
    assert env["MIXVLLM_TERMINAL_SESSION_USER"] == ""  # not the single-user stack's `chat`
    assert env["MIXVLLM_STATE_DIR"] == "/var/lib/mixvllm"
    # No capability beyond docker-compose.yml's four: the overlay adds none.
    assert "cap_add" not in svc and "cap_drop" not in svc and "read_only" not in svc
    volumes = svc["volumes"]  # !override: the single-user home volume is not mounted
    assert "team-homes:/home" in volumes and "team-state:/var/lib/mixvllm" in volumes
    binds = {v["target"]: v for v in volumes if isinstance(v, dict)}
    for name in ACCOUNT_FILES:
        bind = binds[f"/etc/{name}"]
        assert bind["read_only"] is True and bind["bind"] == {"create_host_path": False}
        assert bind["source"] == "${MIXVLLM_TEAM_ACCOUNTS:-./team-accounts}/" + name
    assert set(team["volumes"]) == {"team-homes", "team-state"}


def test_the_account_tool_is_a_one_off_without_network(team: dict[str, Any]) -> None:
    tool = team["services"]["accounts"]
    assert tool["profiles"] == ["accounts"]  # `up` never starts it
    assert tool["network_mode"] == "none"
    assert tool["image"].startswith("mixvllm-terminal:")
    assert "./deploy/team/accounts.sh:/usr/local/lib/mixvllm/accounts.sh:ro" in tool["volumes"]
    assert "team-homes:/home" in tool["volumes"]
    assert (ROOT / "deploy" / "team" / "accounts.sh").stat().st_mode & 0o111


def test_compose_merges_the_overlay_over_the_default_stack(tmp_path: Path) -> None:
    repo = checkout(tmp_path / "repo")
    merged = render(repo, "-f", "docker-compose.yml", "-f", "deploy/compose.team.yml")
    svc = merged["services"]["terminal-server"]
    assert svc["environment"]["MIXVLLM_TERMINAL_AUTH"] == "pam"
    assert svc["environment"]["MIXVLLM_TERMINAL_SESSION_USER"] == ""
    assert sorted(svc["cap_add"]) == ["CHOWN", "KILL", "SETGID", "SETUID"]
    assert svc["read_only"] is True
    targets = sorted(v["target"] for v in svc["volumes"])
    assert targets == ["/etc/group", "/etc/passwd", "/etc/shadow", "/home", "/var/lib/mixvllm"]
    assert "accounts" not in merged["services"]  # its profile is off
    default = render(repo, "-f", "docker-compose.yml")["services"]["terminal-server"]
    assert default["environment"]["MIXVLLM_TERMINAL_SESSION_USER"] == "chat"
    assert "MIXVLLM_TERMINAL_AUTH" not in default["environment"]  # token mode stays default
