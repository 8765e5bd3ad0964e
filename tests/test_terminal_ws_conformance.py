"""RFC 6455 conformance of our own framing (wsconn), case by case in the spirit of Autobahn's
fuzzing client: each case is the bytes a client sends and the control frames (pongs, close
code) the server must send back, plus the text that must reach the session. Raw frames go
over a real TCP socket to a real server, on both event loops.

The session runs `cat` on its PTY, so what reaches it comes back as the terminal's echo,
byte for byte and whatever the locale. A case the server does not close ends with our
ping and close 1000: its pong and the echoed close show the connection is still sound.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass

import pytest

from .terminal_support import Server, running_server
from .ws_support import LOOPS, client_frame, run_on, upgrade

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 100_000  # the server's limit in these cases
READ_TIMEOUT = 5.0  # for a frame the server owes us (a local socket: milliseconds)

Expected = tuple[int, bytes]  # a control frame: (opcode, payload; for a close only its code)


def pong(payload: bytes) -> Expected:
    return (PONG, payload)


def closed(code: int | None) -> Expected:
    return (CLOSE, b"" if code is None else code.to_bytes(2, "big"))


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return client_frame(CLOSE, code.to_bytes(2, "big") + reason)


def stdin(text: bytes) -> bytes:
    """A stdin message's JSON, `text` raw inside the string (any bytes, UTF-8 or not)."""
    return b'["stdin","' + text + b'\\r"]'


def text(payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    return client_frame(TEXT, payload, fin=fin, rsv=rsv)


def fragments(payload: bytes, *cuts: int, between: bytes = b"") -> bytes:
    """A text message in fragments cut at `cuts`, with `between` after each but the last."""
    edges = [0, *cuts, len(payload)]
    parts = [payload[a:b] for a, b in itertools.pairwise(edges)]
    frames = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        frames.append(client_frame(TEXT if i == 0 else CONT, part, fin=last))
        if not last:
            frames.append(between)
    return b"".join(frames)


def long_header(length: int) -> bytes:
    """A masked text frame's header with a 64-bit length, whatever its value."""
    return bytes([0x81, 0x80 | 127]) + length.to_bytes(8, "big") + b"\0\0\0\0"


@dataclass(frozen=True)
class Case:
    name: str
    send: bytes
    expect: tuple[Expected, ...] = ()  # control frames back, in order; a close ends the case
    echo: bytes = b""  # must reach the session
    chop: int = 0  # sent in writes of this many bytes (0: one write)

    @property
    def closes(self) -> bool:
        return bool(self.expect) and self.expect[-1][0] == CLOSE


KAPPA = "κόσμε".encode()  # Autobahn's 2-byte and 3-byte sequences
MAX_CHAR = b"\xf4\x8f\xbf\xbf"  # U+10FFFF, the last code point
PAD = b" " * 70_000  # JSON whitespace: a message with a 64-bit length and little text

VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]
VALID_CODES += [3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]

CASES = [
    # -- framing and lengths (1.x) ----------------------------------------------------------
    Case("7-bit length", text(stdin(b"@len7")), echo=b"@len7"),
    Case("16-bit length", text(stdin(b"@len16") + b" " * 300), echo=b"@len16"),
    Case("64-bit length", text(stdin(b"@len64")[:-1] + PAD + b"]"), echo=b"@len64", chop=4099),
    Case("a frame in 1-byte writes", text(stdin(b"@chop1")), echo=b"@chop1", chop=1),
    Case("two frames in one write", text(stdin(b"@two1")) + text(stdin(b"@two2")), echo=b"@two2"),
    Case("binary message: not our protocol", client_frame(BINARY, b"[]"), (closed(1003),)),
    Case("empty text message: not JSON", text(b""), (closed(1007),)),
    Case("unmasked frame", bytes([0x81, 0x02]) + b"[]", (closed(1002),)),
    # -- pings and pongs (2.x) --------------------------------------------------------------
    Case("empty ping", client_frame(PING, b""), (pong(b""),)),
    Case("125-byte binary ping", client_frame(PING, bytes(range(125))), (pong(bytes(range(125))),)),
    Case("126-byte ping", client_frame(PING, b"p" * 126), (closed(1002),)),
    Case("ping in 1-byte writes", client_frame(PING, b"slow"), (pong(b"slow"),), chop=1),
    Case(
        "ten pings",
        b"".join(client_frame(PING, b"%d" % i) for i in range(10)),
        tuple(pong(b"%d" % i) for i in range(10)),
    ),
    Case(
        "unsolicited pong: no answer",
        client_frame(PONG, b"unasked") + text(stdin(b"@pong1")),
        echo=b"@pong1",
    ),
    Case(
        "unsolicited pong, then a ping",
        client_frame(PONG, b"unasked") + client_frame(PING, b"asked"),
        (pong(b"asked"),),
    ),
    # -- reserved bits (3.x) ----------------------------------------------------------------
    *(
        Case(f"RSV {rsv >> 4} on text", text(stdin(b"@rsv"), rsv=rsv), (closed(1002),))
        for rsv in (0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70)
    ),
    Case("RSV on a ping", client_frame(PING, b"x", rsv=0x40), (closed(1002),)),
    Case("RSV on a close", client_frame(CLOSE, b"\x03\xe8", rsv=0x20), (closed(1002),)),
    Case(
        "a message, then RSV",
        text(stdin(b"@rsv2")) + text(b"[]", rsv=0x20),
        (closed(1002),),
    ),
    # -- opcodes (4.x) ----------------------------------------------------------------------
    *(
        Case(f"reserved opcode {op:#x}", client_frame(op, b"x"), (closed(1002),))
        for op in (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)
    ),
    Case(
        "reserved opcode after a ping",
        client_frame(PING, b"first") + client_frame(0xB, b""),
        (pong(b"first"), closed(1002)),
    ),
    # -- fragmentation (5.x) ----------------------------------------------------------------
    Case("fragmented ping", client_frame(PING, b"p", fin=False), (closed(1002),)),
    Case("fragmented pong", client_frame(PONG, b"p", fin=False), (closed(1002),)),
    Case("fragmented close", client_frame(CLOSE, b"\x03\xe8", fin=False), (closed(1002),)),
    Case("two fragments", fragments(stdin(b"@frag2"), 4), echo=b"@frag2"),
    Case(
        "1-byte fragments",
        fragments(stdin(b"@frag1"), *range(1, len(stdin(b"@frag1")))),
        echo=b"@frag1",
    ),
    Case(
        "a ping between fragments",
        fragments(stdin(b"@fping"), 3, 9, between=client_frame(PING, b"mid")),
        (pong(b"mid"), pong(b"mid")),
        echo=b"@fping",
    ),
    Case(
        "a ping between fragments, 1-byte writes",
        fragments(stdin(b"@fchop"), 5, between=client_frame(PING, b"mid")),
        (pong(b"mid"),),
        echo=b"@fchop",
        chop=1,
    ),
    Case(
        "empty fragments",
        text(b"", fin=False)
        + client_frame(CONT, b"", fin=False)
        + client_frame(CONT, stdin(b"@empty")),
        echo=b"@empty",
    ),
    Case(
        "fragmented binary message: not our protocol",
        client_frame(BINARY, b"[", fin=False) + client_frame(CONT, b"]"),
        (closed(1003),),
    ),
    Case("continuation of nothing", client_frame(CONT, b"x"), (closed(1002),)),
    Case(
        "unfinished continuation of nothing",
        client_frame(CONT, b"x", fin=False),
        (closed(1002),),
    ),
    Case(
        "text inside a fragmented message",
        text(b'["stdin",', fin=False) + text(b'"x"]'),
        (closed(1002),),
    ),
    Case(
        "continuation after a whole message",
        text(stdin(b"@whole")) + client_frame(CONT, b"x"),
        (closed(1002),),
    ),
    # -- UTF-8 (6.x) ------------------------------------------------------------------------
    Case("valid UTF-8", text(stdin(b"@u8" + KAPPA)), echo=b"@u8" + KAPPA),
    Case("4-byte UTF-8, U+10FFFF", text(stdin(b"@u4" + MAX_CHAR)), echo=b"@u4" + MAX_CHAR),
    Case(
        "valid UTF-8 cut inside characters",
        fragments(stdin(b"@u8cut" + KAPPA), 16, 18, 19),
        echo=b"@u8cut" + KAPPA,
    ),
    *(
        Case(f"invalid UTF-8: {name}", text(stdin(bad)), (closed(1007),))
        for name, bad in [
            ("0xff", b"\xff"),
            ("overlong /", b"\xc0\xaf"),
            ("surrogate", b"\xed\xa0\x80"),
            ("above U+10FFFF", b"\xf4\x90\x80\x80"),
            ("continuation byte alone", b"\x80"),
        ]
    ),
    Case("UTF-8 cut at the message's end", fragments(b'["stdin","\xce', 10), (closed(1007),)),
    Case("invalid first fragment, never finished", text(b"\xff", fin=False), (closed(1007),)),
    Case(
        "invalid second fragment, never finished",
        text(b'["stdin","ok', fin=False) + client_frame(CONT, b"\xc0\xaf", fin=False),
        (closed(1007),),
    ),
    Case(
        "invalid across fragments, never finished",
        text(b'["stdin","\xf4', fin=False) + client_frame(CONT, b"\x90", fin=False),
        (closed(1007),),
    ),
    # -- closing (7.x) ----------------------------------------------------------------------
    Case("empty close", client_frame(CLOSE, b""), (closed(None),)),
    Case("close with a 123-byte reason", close_frame(1000, b"r" * 123), (closed(1000),)),
    Case("close with a UTF-8 reason", close_frame(1001, KAPPA), (closed(1001),)),
    Case("close with a 124-byte reason", close_frame(1000, b"r" * 124), (closed(1002),)),
    Case("close with 1 byte", client_frame(CLOSE, b"\x03"), (closed(1002),)),
    Case("close reason not UTF-8", close_frame(1000, b"\xce\xba\xff"), (closed(1007),)),
    *(Case(f"close {code}", close_frame(code), (closed(code),)) for code in VALID_CODES),
    *(Case(f"close {code}: invalid", close_frame(code), (closed(1002),)) for code in INVALID_CODES),
    Case("a message after the close", close_frame(1000) + text(stdin(b"@late")), (closed(1000),)),
    Case("a ping after the close", close_frame(1000) + client_frame(PING, b"x"), (closed(1000),)),
    # -- limits (9.x) -----------------------------------------------------------------------
    Case("a frame over the limit", long_header(MAX_MESSAGE + 1) + b"x" * 1024, (closed(1009),)),
    Case(
        "fragments over the limit",
        text(b" " * 60_000, fin=False) + client_frame(CONT, b" " * 60_000, fin=False),
        (closed(1009),),
    ),
    Case("64-bit length, top bit set", long_header(1 << 63) + b"x" * 16, (closed(1002),)),
    Case("64-bit length, all ones", long_header((1 << 64) - 1) + b"x" * 16, (closed(1002),)),
]


async def run_case(srv: Server, session_id: str, case: Case) -> str | None:
    """None if the server answered `case` as expected; else what it did instead."""
    raw = await upgrade(srv, f"session={session_id}")
    got: list[Expected] = []

    async def read() -> None:
        opcode, payload = await asyncio.wait_for(raw.frame(), READ_TIMEOUT)
        if opcode == BINARY:  # output: the session's echo
            raw.output += payload
        elif opcode != TEXT:  # text is setup and the like
            got.append((opcode, payload[:2] if opcode == CLOSE else payload))

    def closing() -> bool:
        return bool(got) and got[-1][0] == CLOSE

    expected = case.expect
    rest = b""
    try:
        step = case.chop or len(case.send)
        for start in range(0, len(case.send), step):
            raw.send(case.send[start : start + step])
            await raw.writer.drain()
        if not case.closes:
            while case.echo not in raw.output and not closing():
                await read()
            raw.send(client_frame(PING, b"end") + close_frame(1000))
            expected += (pong(b"end"), closed(1000))
        while not closing():
            await read()
        # As a client must, answer the server's close (it may have hung up already).
        raw.send(close_frame(1000))
        with contextlib.suppress(ConnectionResetError):
            rest = await asyncio.wait_for(raw.reader.read(), READ_TIMEOUT)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
        return f"{case.name}: {type(exc).__name__} after {got}, expected {list(expected)}"
    finally:
        raw.hang_up()
    if got != list(expected) or rest or case.echo not in raw.output:
        return f"{case.name}: got {got} then {rest[:20]!r}, expected {list(expected)} then EOF"
    return None


def test_the_cases_are_distinct() -> None:
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names)
    echoes = [case.echo for case in CASES if case.echo]
    for echo in echoes:  # a reattach replays output: no case may find another's echo
        assert sum(echo in other for other in echoes) == 1, echo


@pytest.mark.parametrize("loop", LOOPS)
def test_each_case_gets_the_answer_rfc_6455_asks_for(loop: str | None) -> None:
    async def body() -> None:
        async with running_server(
            shell=("/bin/cat",), max_message_bytes=MAX_MESSAGE, ping_interval=0,
            scrollback_bytes=4096,
        ) as srv:  # fmt: skip
            first = await upgrade(srv, then=client_frame(TEXT, stdin(b"@start")))
            await first.until(b"@start")
            assert first.setup is not None
            session_id = str(first.setup["session"])
            first.hang_up()
            failures = [f for case in CASES if (f := await run_case(srv, session_id, case))]
            assert not failures, "\n".join(failures)
            # Every case reattached the one session; none took the server down.
            again = await upgrade(srv, f"session={session_id}", client_frame(TEXT, stdin(b"@end")))
            await again.until(b"@end")
            again.hang_up()

    run_on(loop, body, timeout=100)  # under pytest-timeout's 120 s
