"""The config file never crashes chat: every key of the option table, given a value of every
TOML type, is either used or refused with one line naming the key and the file (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chat_cli.config import OPTIONS, Config, load_config
from chat_cli.errors import ConfigError
from mixvllm_common.options import Option
from tests.chat_support import chat_env, closed_port_url

# One value of each TOML type, as written in the file, and the type's name.
SAMPLES = {
    "true": "boolean",
    "5": "integer",
    "-1": "integer",
    "1.5": "float",
    '"abc"': "string",
    '""': "string",
    "[1, 2]": "array",
    '["a=/bin/true"]': "array",
    "{ a = 1 }": "table",
    "1979-05-27T07:32:00Z": "datetime",
    "07:32:00": "time",
}


def _takes(opt: Option) -> str:
    """What an option's kind makes of text: a boolean, a number or a string."""
    try:
        if isinstance(opt.kind("true"), bool):
            return "boolean"
    except ValueError:
        pass
    try:
        opt.kind("1")
    except ValueError:
        return "string"
    return "number" if isinstance(opt.kind("1"), int | float) else "string"


TABLES = {"mcp": "table", "roles": "table", "servers": "table"}
KEYS = {opt.dest: _takes(opt) for opt in OPTIONS if opt.dest != "mcp"} | TABLES
ACCEPTED_TYPES = {
    "boolean": {"boolean", "string"},
    "number": {"integer", "float", "string"},
    "string": {"string"},
    "table": {"table"},
}


def _load(tmp_path: Path, text: str) -> Config:
    config = tmp_path / "chat.toml"
    config.write_text(text)
    return load_config(["--config", str(config)], {})


@pytest.mark.parametrize("sample", SAMPLES)
@pytest.mark.parametrize("key", KEYS)
def test_every_key_and_every_type_is_used_or_one_line(
    tmp_path: Path, key: str, sample: str
) -> None:
    try:
        _load(tmp_path, f"{key} = {sample}\n")
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message
        assert key in message and str(tmp_path / "chat.toml") in message
        assert err.exit_code == 2
        return
    # Used: only a value of a type the key takes (a string is read as an env var's text).
    assert SAMPLES[sample] in ACCEPTED_TYPES[KEYS[key]], f"{key} = {sample} was accepted"


@pytest.mark.parametrize(
    "text",
    [
        "mcp = 5",
        "mcp = true",
        'mcp = "abc"',
        'mcp = ["a=/bin/true"]',
        "[mcp]\nservers = 5",
        "[mcp.servers]\nx = 5",
        "[mcp.servers.x]\ncommand = 5",
        '[mcp.servers.x]\ncommand = "x"\nargs = "a b"',
        '[mcp.servers.x]\ncommand = "x"\nargs = [1]',
        '[mcp.servers.x]\ncommand = "x"\nenv = ["A=1"]',
        '[mcp.servers.x]\ncommand = "x"\nenv = { A = 1 }',
        '[mcp.servers.x]\nurl = "http://h/mcp"\nheaders = { A = true }',
        '[mcp.servers.x]\nurl = ["http://h/mcp"]',
    ],
)
def test_a_wrong_mcp_table_is_one_line_and_exit_2(tmp_path: Path, text: str) -> None:
    config = tmp_path / "chat.toml"
    config.write_text(text + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "chat_cli", "--config", str(config), "hi"],
        capture_output=True,
        text=True,
        timeout=60,
        env=chat_env(tmp_path, closed_port_url()),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"chat: config file {config}: mcp")


def test_a_value_of_the_right_type_is_used(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        'temperature = 1\ntop_p = "0.5"\nplain = true\nresume = "true"\nmax_tokens = 64\n'
        'url = "http://h:1"\n',
    )
    assert (config.temperature, config.top_p, config.plain, config.resume) == (1.0, 0.5, True, True)
    assert (config.max_tokens, config.url) == (64, "http://h:1/v1")
