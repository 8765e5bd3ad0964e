"""The WebSocket wire format (RFC 6455) as a server speaks it: opcodes, close codes, frames."""

from __future__ import annotations

__all__ = [
    "CLOSE_INVALID_DATA", "CLOSE_PROTOCOL_ERROR", "CLOSE_TOO_BIG", "MAX_REASON",
    "OP_BINARY", "OP_CLOSE", "OP_CONTINUATION", "OP_PING", "OP_PONG", "OP_TEXT",
    "close_code_valid", "close_payload", "frame", "websocket_mask",
]  # fmt: skip

try:
    from tornado.speedups import websocket_mask  # C, ships with Tornado's wheels
except ImportError:  # pragma: no cover - a source install of Tornado

    def websocket_mask(mask: bytes, data: bytes) -> bytes:
        n = len(data)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
MAX_REASON = 123  # bytes of close reason: a control frame's payload is at most 125


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 1 << 16:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def close_code_valid(code: int) -> bool:
    """May an endpoint put `code` in a close frame? (RFC 6455 7.4 and IANA's registry: 1004 is
    reserved; 1005, 1006 and 1015 stand for "none", "dropped" and "TLS failed" and are never
    sent; 1016-2999 are unassigned; 3000-4999 are for libraries and applications.)"""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_payload(code: int | None, reason: str = "") -> bytes:
    """A close frame's payload: nothing without a sendable code, else the code and as much of
    `reason` as fits, cut on a character boundary (a cut in a character is not UTF-8)."""
    if code is None or not close_code_valid(code):
        return b""
    text = reason.encode("utf-8")[:MAX_REASON].decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + text
