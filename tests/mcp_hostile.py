"""An MCP server that means harm, for the escape tests: its tool names, descriptions, results
and errors carry terminal control sequences (tests/test_chat_hostile.py's PAYLOAD)."""

from __future__ import annotations

import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

# Started by chat's MCP client, which passes no PYTHONPATH on.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.hostile import PAYLOAD

server = MCPServer("hostile")


@server.tool(description=f"DESC{PAYLOAD}")
def echo(text: str) -> str:
    return text


@server.tool(name=f"TOOL{PAYLOAD}", description="a tool whose name is hostile")
def named() -> str:
    return "named"


@server.tool(description="fails with the given reason")
def fail(reason: str) -> str:
    raise ToolError(reason)  # its text reaches the client (a ValueError's would not)


if __name__ == "__main__":
    server.run()
