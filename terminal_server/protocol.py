"""The WebSocket wire protocol: message names and validation of incoming frames.

Close to terminado's (`["stdin", s]`, `["stdout", s]`, `["set_size", rows, cols]`), plus
`["ack", frames]`: the page acknowledges stdout frames once xterm.js has consumed them, which
is what lets the server stop reading the PTY instead of buffering for a slow client.
A client that connects with `?binary=1` (the page does) gets stdout as binary frames holding
the PTY's bytes: no UTF-8 decode and JSON escaping on the server, no JSON.parse in the page.
A binary client that also asks for `?ack=bytes` acknowledges by byte count instead: the setup
message then carries `"ack_bytes": n`, and the client sends `["ack_bytes", consumed]` only once
it has consumed at least n bytes since its last ack, so typing and its echo cost no ack
message at all. n is below the flow window, so a client that holds back the rest never stalls
the server. A client that asks and finds no `ack_bytes` in setup (an older server) acks frames.
A client that connects with `?sizes=1` (the page does) gets `"sizes": true` in setup and
`["size", rows, cols]` after each of its set_size, in order with stdout: it resizes its own
screen there, so output the program drew for the old size is shown at that size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

# client -> server
STDIN: Final = "stdin"
SET_SIZE: Final = "set_size"
ACK: Final = "ack"  # ["ack", frames]: that many more stdout frames consumed
ACK_BYTES: Final = "ack_bytes"  # ["ack_bytes", n]: n more stdout bytes consumed (?ack=bytes)

# query parameters of the WebSocket URL that choose the output mode
BINARY_PARAM: Final = "binary"  # "1": stdout as binary frames
ACK_PARAM: Final = "ack"  # "bytes": acknowledge by byte count (binary clients only)
ACK_MODE_BYTES: Final = "bytes"
SIZES_PARAM: Final = "sizes"  # "1": each set_size is answered with ["size", rows, cols]

# server -> client
SETUP: Final = "setup"  # ["setup", {"session", "reattached", "ack_bytes"?: n, "sizes"?: true}]
STDOUT: Final = "stdout"  # ["stdout", text]; with ?binary=1 a binary frame of raw UTF-8 instead
DISCONNECT: Final = "disconnect"  # ["disconnect", exit_code]: the session's program ended
ERROR: Final = "error"  # ["error", message]: sent just before a close
SHARE: Final = "share"  # to the owner: ["share", {"url": str | None, "viewers": n}]
SIZE: Final = "size"  # ["size", rows, cols]: the PTY's size, to a viewer; to an owner with
# ?sizes=1, after each set_size, behind every byte of output drawn for the size before

# WebSocket close codes (RFC 6455 + the private 4000-4999 range).
CLOSE_GOING_AWAY: Final = 1001  # server shutting down
CLOSE_UNSUPPORTED: Final = 1003  # binary frames
CLOSE_INVALID: Final = 1007  # malformed or invalid message
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_TRY_LATER: Final = 1013  # session cap reached
CLOSE_TAKEN_OVER: Final = 4001  # the session was attached from another tab
CLOSE_SESSION_ENDED: Final = 4002  # the program in the session exited
CLOSE_NO_PONG: Final = 4003  # no answer to a ping in time; the session stays for reattach
CLOSE_VIEW_ONLY: Final = 4004  # a viewer of a share sent stdin or set_size
CLOSE_SHARE_ENDED: Final = 4005  # the owner revoked the share

MAX_DIMENSION: Final = 1000  # rows or columns; anything larger is junk


class ProtocolError(ValueError):
    """An incoming frame that does not follow the protocol."""


@dataclass(frozen=True)
class Stdin:
    data: str


@dataclass(frozen=True)
class SetSize:
    rows: int
    cols: int


@dataclass(frozen=True)
class Ack:
    frames: int


@dataclass(frozen=True)
class AckBytes:
    count: int


ClientMessage = Stdin | SetSize | Ack | AckBytes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Validate one text frame from the page; raise ProtocolError on anything unexpected."""
    if isinstance(raw, bytes):
        raise ProtocolError("binary frames are not part of the protocol")
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("frame is not valid JSON") from exc
    if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
        raise ProtocolError("frame must be a JSON array starting with a message name")
    name, args = msg[0], msg[1:]
    if name == STDIN:
        if len(args) != 1 or not isinstance(args[0], str):
            raise ProtocolError("stdin takes one string")
        return Stdin(args[0])
    if name == SET_SIZE:
        if len(args) != 2 or not all(_is_int(a) for a in args):
            raise ProtocolError("set_size takes two integers")
        rows, cols = args
        if not (1 <= rows <= MAX_DIMENSION and 1 <= cols <= MAX_DIMENSION):
            raise ProtocolError(f"set_size out of range: {rows}x{cols}")
        return SetSize(rows, cols)
    if name in (ACK, ACK_BYTES):
        if len(args) != 1 or not _is_int(args[0]) or args[0] < 1:
            raise ProtocolError(f"{name} takes one positive integer")
        return Ack(args[0]) if name == ACK else AckBytes(args[0])
    raise ProtocolError(f"unknown message {name[:32]!r}")


def encode(name: str, *args: object) -> str:
    return json.dumps([name, *args], ensure_ascii=False, separators=(",", ":"))
