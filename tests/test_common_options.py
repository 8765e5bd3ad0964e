"""The shared configuration layer: precedence, booleans, errors naming their source, URL forms."""

from __future__ import annotations

import argparse

import pytest

from mixvllm_common.options import (
    Option,
    OptionError,
    add_to_parser,
    boolean,
    integer,
    markdown_table,
    number,
    resolve,
)
from mixvllm_common.urls import api_base, server_root

NONE = "\N{EN DASH}"
OPTIONS = (
    Option("port", ("--port", "-p"), ("APP_PORT", "OLD_PORT"), integer(1, 65535), 80, "port"),
    Option("ratio", ("--ratio",), ("APP_RATIO",), number(0, 1), None, "share"),
    Option("name", ("--name",), ("APP_NAME",), str, "anon", "who", shown_default="computed"),
    Option("fast", ("--fast",), ("APP_FAST",), boolean, True, "go fast", off_flag="--slow"),
    Option("secret", (), ("APP_SECRET",), str, None, "env only"),
)


def _resolve(argv: list[str], env: dict[str, str], file: dict[str, object] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    add_to_parser(parser, OPTIONS)
    return resolve(OPTIONS, env, parser.parse_args(argv), file, "/etc/app.toml")


def test_flag_beats_env_beats_file_beats_default() -> None:
    file = {"port": 3, "name": "from-file"}
    assert _resolve([], {})["port"] == 80
    assert _resolve([], {}, file)["port"] == 3
    assert _resolve([], {"APP_PORT": "2"}, file)["port"] == 2
    assert _resolve(["-p", "1"], {"APP_PORT": "2"}, file)["port"] == 1
    assert _resolve([], {}, file)["name"] == "from-file"
    assert _resolve([], {})["ratio"] is None


def test_first_set_env_var_wins_and_empty_counts_as_unset() -> None:
    assert _resolve([], {"APP_PORT": "", "OLD_PORT": "9"})["port"] == 9
    assert _resolve([], {"APP_PORT": "8", "OLD_PORT": "9"})["port"] == 8
    assert _resolve([], {"APP_NAME": "  "})["name"] == "anon"
    assert _resolve([], {"APP_SECRET": " s3 "})["secret"] == "s3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), (" on ", True),
     ("0", False), ("false", False), ("No", False), ("off", False)],
)  # fmt: skip
def test_boolean_words(text: str, expected: bool) -> None:
    assert boolean(text) is expected


def test_boolean_flags_env_and_file() -> None:
    assert _resolve([], {})["fast"] is True
    assert _resolve([], {"APP_FAST": "off"})["fast"] is False
    assert _resolve(["--fast"], {"APP_FAST": "0"})["fast"] is True
    assert _resolve(["--slow"], {"APP_FAST": "1"})["fast"] is False
    assert _resolve([], {}, {"fast": False})["fast"] is False
    with pytest.raises(SystemExit):
        _resolve(["--fast", "--slow"], {})


@pytest.mark.parametrize(
    ("argv", "env", "file", "message"),
    [
        (["--port", "0"], {}, None, "invalid value '0' for --port: must be an integer 1..65535"),
        ([], {"OLD_PORT": "http"}, None,
         "invalid value 'http' for $OLD_PORT: must be an integer 1..65535 (for --port)"),
        ([], {}, {"port": "x"},
         "invalid value 'x' for port in /etc/app.toml: must be an integer 1..65535"),
        ([], {"APP_RATIO": "1.5"}, None,
         "invalid value '1.5' for $APP_RATIO: must be a number in (0, 1] (for --ratio)"),
        (["--ratio", "nan"], {}, None,
         "invalid value 'nan' for --ratio: must be a number in (0, 1]"),
        ([], {"APP_FAST": "maybe"}, None,
         "invalid value 'maybe' for $APP_FAST: not a boolean (1/true/yes/on or 0/false/no/off)"
         " (for --fast)"),
    ],
)  # fmt: skip
def test_a_bad_value_names_its_source(
    argv: list[str], env: dict[str, str], file: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(OptionError) as err:
        _resolve(argv, env, file)
    assert str(err.value) == message


def test_help_names_env_vars_and_default() -> None:
    parser = argparse.ArgumentParser()
    add_to_parser(parser, OPTIONS)
    text = " ".join(parser.format_help().split())
    assert "port [env $APP_PORT or $OLD_PORT; default: 80]" in text
    assert "who [env $APP_NAME; default: computed]" in text
    assert "share [env $APP_RATIO]" in text
    assert "APP_SECRET" not in text  # env-only: documented in the docs/configuration.md table


def test_markdown_table_rows() -> None:
    rows = markdown_table(OPTIONS).splitlines()
    assert rows[0] == "| flag | env | default | meaning |"
    assert rows[2] == "| `--port`, `-p` | `APP_PORT` / `OLD_PORT` | `80` | port |"
    assert rows[3] == f"| `--ratio` | `APP_RATIO` | {NONE} | share |"
    assert rows[5] == "| `--fast` / `--slow` | `APP_FAST` | on | go fast |"
    assert rows[6] == f"| {NONE} | `APP_SECRET` | {NONE} | env only |"


@pytest.mark.parametrize(
    "url", ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "h:8000/v1/", " h:8000 "]
)
def test_every_url_form_gives_one_root_and_one_api_base(url: str) -> None:
    assert server_root(url) == "http://h:8000"
    assert api_base(url) == "http://h:8000/v1"


def test_https_is_kept() -> None:
    assert api_base("https://models.example/v1/") == "https://models.example/v1"
