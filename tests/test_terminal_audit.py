"""The audit log (terminal_server/team/audit.py): JSON lines, owner-only, data kept as data."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from terminal_server.config import ConfigError, load_config
from terminal_server.team.audit import MAX_VALUE_CHARS, AuditLog


def test_each_event_is_one_json_line_in_an_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit.jsonl"
    audit = AuditLog(path)
    audit.record("login", "alice", method="pam", address="127.0.0.1")
    audit.record("session_start", "alice", session="abc")
    audit.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["login", "session_start"]
    first = json.loads(lines[0])
    assert first["user"] == "alice" and first["method"] == "pam" and first["time"] > 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_hostile_value_stays_text_and_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.record("login_failed", "\x1b]52;c;aGk=\x07evil", reason="x" * 10_000)
    audit.close()
    raw = path.read_bytes()
    assert b"\x1b" not in raw and b"\x07" not in raw and raw.isascii()
    entry = json.loads(raw)
    assert entry["user"] == "\x1b]52;c;aGk=\x07evil"  # the exact text, escaped in the file
    assert len(entry["reason"]) == MAX_VALUE_CHARS + 1


def test_an_unwritable_log_costs_one_line_not_the_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    audit = AuditLog(blocker / "audit.jsonl")  # its parent is a file
    for _ in range(3):
        audit.record("login", "alice")
    assert len([r for r in caplog.records if "audit log" in r.getMessage()]) == 1


def test_none_records_nothing(tmp_path: Path) -> None:
    AuditLog(None).record("login", "alice")
    assert os.listdir(tmp_path) == []


def test_the_default_path_follows_the_auth_mode(tmp_path: Path) -> None:
    env = {"MIXVLLM_STATE_DIR": str(tmp_path), "MIXVLLM_TERMINAL_TOKEN": "t" * 16}
    assert load_config([], env).audit_log is None
    team = load_config(["--auth", "proxy"], env)
    assert team.audit_log == tmp_path / "audit.jsonl"
    assert load_config(["--auth", "proxy", "--audit-log", "off"], env).audit_log is None
    assert load_config(["--audit-log", "/x/a.jsonl"], env).audit_log == Path("/x/a.jsonl")
    with pytest.raises(ConfigError):
        load_config(["--auth", "proxy", "--token", "t" * 16], env)
