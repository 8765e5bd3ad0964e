"""A small MCP server for the tests (stdio, or streamable HTTP with `--http PORT`), built with
the official SDK. Its tools cover the paths chat has to handle: a plain result, a slow call
(Ctrl-C), a huge result, an error, and a tool without arguments for the real-model round trip.

Run it by hand: `python tests/mcp_server.py` (stdio) or `python tests/mcp_server.py --http 8765`.
"""

from __future__ import annotations

import os
import sys
import time

from mcp.server.mcpserver import MCPServer

SECRET = "PAPAYA-42"

server = MCPServer("mixvllm-test-tools")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> str:
    """Add two whole numbers."""
    return str(a + b)


@server.tool()
def secret_word() -> str:
    """Tell the secret word of the day. Takes no arguments."""
    return f"The secret word is {SECRET}."


@server.tool()
def slow(seconds: float) -> str:
    """Wait for the given number of seconds, then say so."""
    time.sleep(seconds)
    return f"waited {seconds} s"


@server.tool()
def big(lines: int) -> str:
    """Return that many numbered lines of text."""
    return "\n".join(f"line {n} " + "x" * 60 for n in range(1, lines + 1))


@server.tool()
def fail(reason: str) -> str:
    """Always fails with the given reason."""
    raise ValueError(reason)


@server.tool()
def crash() -> str:
    """Make the server exit at once, as a server that dies does."""
    print("crashed on purpose", file=sys.stderr, flush=True)
    os._exit(3)


def main() -> None:
    """`[--sleep SECONDS] [--http PORT]`; other arguments are ignored (a test's marker)."""
    args = sys.argv[1:]
    if args[:1] == ["--sleep"]:  # a server slow to start
        time.sleep(float(args[1]))
        args = args[2:]
    if args[:1] == ["--http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(args[1]))
    else:
        server.run()


if __name__ == "__main__":
    main()
