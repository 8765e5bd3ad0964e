"""The README's configuration tables are the ones the programs' option tables render, and they
list every flag and environment variable of the real argument parsers, so docs cannot drift."""

from __future__ import annotations

import argparse
import re
import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_cli.config import build_parser as chat_parser
from model_server.__main__ import build_parser as serve_parser
from terminal_server.config import build_parser as terminal_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ENV_IN_HELP = re.compile(r"\$([A-Z][A-Z0-9_]+)")


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def _documented(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    for sub in _all_parsers(parser):
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            for flag in action.option_strings:
                if flag.startswith("--") and flag not in ("--help", "--version"):
                    yield sub.prog, flag
            for env in ENV_IN_HELP.findall(action.help or ""):
                yield sub.prog, env


PARSERS = {
    "mixvllm-terminal": terminal_parser(),
    "chat": chat_parser(),
    "mixvllm-serve": serve_parser(),
}


@pytest.mark.parametrize("program", sorted(PARSERS))
def test_every_flag_and_env_var_is_in_the_readme(program: str) -> None:
    missing = sorted({f"{prog}: {name}" for prog, name in _documented(PARSERS[program])
                      if f"`{name}`" not in README and f"`${name}" not in README})  # fmt: skip
    assert missing == [], "README configuration table lacks: " + ", ".join(missing)


def test_configuration_tables_are_the_rendered_option_tables() -> None:
    tables = runpy.run_path(str(ROOT / "scripts" / "config_tables.py"))
    assert README.count("<!-- options: ") == len(tables["TABLES"])
    assert tables["render"](README) == README, (
        "README configuration tables are stale: run `python scripts/config_tables.py`"
    )


def test_readme_quick_start_is_the_ci_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec make test" in ci
    assert "make run" in README
    assert "make test" in README
