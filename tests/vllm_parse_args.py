"""Parse engine command lines with the installed vLLM's own `vllm serve` parser and validator.

Run with .venv-vllm's interpreter (vLLM is not installed in the project venv):
    python tests/vllm_parse_args.py < {"profile": ["serve", MODEL, "--flag", ...], ...}
Prints {"profile": null | "error text", ...} as JSON. Nothing is started or downloaded:
argparse checks flag names, types and choices; vLLM's validator checks combinations, and the
tool-call and reasoning parser names are looked up in vLLM's registries.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.reasoning import ReasoningParserManager
from vllm.tool_parsers import ToolParserManager
from vllm.utils.argparse_utils import FlexibleArgumentParser


def check(argv: list[str]) -> str | None:
    parser = FlexibleArgumentParser(prog="vllm")
    subparsers = parser.add_subparsers(dest="subparser")
    command = ServeSubcommand()
    command.subparser_init(subparsers).set_defaults(dispatch_function=command.cmd)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
            command.validate(args)
            # Parser names are free strings to argparse (plugins may add more): look them up
            # in vLLM's registries, importing each parser class as the server would.
            if args.tool_call_parser:
                ToolParserManager.get_tool_parser(args.tool_call_parser)
            if args.reasoning_parser:
                ReasoningParserManager.get_reasoning_parser(args.reasoning_parser)
    except SystemExit:
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "exit"
    except Exception as exc:  # ValueError/TypeError from the validator, KeyError from lookups
        return f"{type(exc).__name__}: {exc}"
    return None


if __name__ == "__main__":
    commands = json.load(sys.stdin)
    json.dump({name: check(argv) for name, argv in commands.items()}, sys.stdout)
