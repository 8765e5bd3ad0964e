"""A WebSocket connection (RFC 6455, server side) on an asyncio transport.

Tornado reads each message in three or four awaited steps and re-registers the socket with
epoll around each; a keystroke is one small frame, so that was most of the server's Python
time per key. Here the upgrade stays a Tornado request (`wsupgrade.py`) and the socket then
belongs to the event loop's own transport (C code under uvloop): one `data_received` per
packet, frames parsed from it in place, one `transport.write` per frame sent.

No extensions are negotiated (no compression: PTY output is mostly short frames, and the
stream is local or behind a proxy). What a client sends is bounded: a message over
`max_message` closes with 1009 and the rest is read and dropped (so the close frame is not
lost to a TCP reset); so is what the server buffers for a client that stops reading.

The wire format is `wsframe.py`; a TLS socket reaches a connection through `wstls.py`.
What a client sends is checked as RFC 6455 asks, and a violation fails the connection with
one close frame (1002, or 1007 for text that is not UTF-8): reserved bits and opcodes, an
unmasked frame, a 64-bit length with its top bit set, a fragmented or over-long control
frame, a close frame with one byte or a code no endpoint may send. Text is checked fragment
by fragment, so a client cannot hold a message it already broke open. Only a pong that
answers our latest ping reaches the endpoint's on_pong: a client that sends pongs of its own
but reads nothing must not pass for alive.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import secrets
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, cast

from .wsframe import (
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    close_code_valid,
    close_payload,
    frame,
    websocket_mask,
)

log = logging.getLogger("mixvllm.terminal")

CLOSE_WAIT_S = 5.0  # how long a closing server waits for the client's close frame (as Tornado)


class Endpoint(Protocol):
    """What the connection calls: the handler of one socket."""

    def on_message(self, message: str | bytes) -> None: ...

    def on_pong(self, data: bytes) -> None: ...

    def on_close(self) -> None: ...

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Transport(Protocol):
    """The part of `asyncio.Transport` the connection uses (`StreamTransport` has it too)."""

    def write(self, data: bytes) -> None: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Connection(asyncio.Protocol):
    """Frames in and out for one endpoint; reading starts with `start()`, after its open()."""

    def __init__(self, endpoint: Endpoint, *, max_message: int, max_buffered: int) -> None:
        self._endpoint = endpoint
        self._max_message = max_message
        self._max_buffered = max_buffered  # bytes queued for a client that does not read
        self._transport: Transport | None = None
        self._started = False  # the endpoint is open: frames are handled
        self._held = bytearray()  # what arrived before that
        self._buf = bytearray()  # an incomplete frame
        self._need = 0  # bytes `_buf` must hold before it is worth parsing again
        # A message arriving in several frames: its opcode (None: no such message), its size
        # so far, and its parts: bytes for binary, text decoded (and so checked) per fragment.
        self._fragmented: int | None = None
        self._fragment_len = 0
        self._binary = bytearray()
        self._text: list[str] = []
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._ping_data: bytes | None = None  # the payload of our ping not yet answered
        self._sent_close = False
        self._got_close = False
        self._lost = False
        self._ended = False  # the endpoint's on_close has run
        self._discarding = False  # after a 1009: read and drop until the client hangs up
        self._close_timer: asyncio.TimerHandle | None = None
        self.close_code: int | None = None  # the code of the client's close frame

    # -- to the client --------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """No frame can be sent any more (closing or gone)."""
        return self._sent_close or self._lost

    def write_message(self, message: str | bytes, binary: bool = False) -> None:
        """Send one message; dropped once the connection is closing (on_close follows)."""
        if isinstance(message, str):
            message = message.encode("utf-8")
        self._send(OP_BINARY if binary else OP_TEXT, message)

    def ping(self, data: bytes | None = None) -> None:
        """Send a ping; only a pong that carries its payload (random unless given) counts."""
        self._ping_data = secrets.token_bytes(8) if data is None else data[:125]
        self._send(OP_PING, self._ping_data)

    def _send(self, opcode: int, payload: bytes) -> None:
        if not self.closed and self._transport is not None:
            self._transport.write(frame(opcode, payload))

    def abort(self) -> None:
        """Hang up at once; nothing more is sent or read (connection_lost follows)."""
        if self._transport is not None and not self._lost:
            self._lost = True
            self._transport.abort()

    def close(self, code: int | None = None, reason: str = "") -> None:
        """Start the closing handshake: a close frame, then the client's, or a timeout."""
        transport = self._transport
        if transport is None or self._lost:
            return
        if not self._sent_close:
            self._sent_close = True
            transport.write(frame(OP_CLOSE, close_payload(code, reason)))
        if self._got_close:
            transport.close()
        elif self._close_timer is None and not self._discarding:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_WAIT_S, self.abort)

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop's is not a registered subclass
        stream.set_write_buffer_limits(high=self._max_buffered)
        self.attach(stream)

    def attach(self, transport: Transport) -> None:
        self._transport = transport

    def start(self, early: bytes = b"") -> None:
        """The endpoint is open: handle frames, starting with `early` (sent with the handshake)
        and what arrived while open() ran."""
        self._started = True
        if self._lost:  # the client left while open() ran: its on_close runs only now
            self._end()
            return
        held = early + bytes(self._held)
        self._held.clear()
        if held:
            self.data_received(held)
        if self._transport is not None and not self._lost:
            self._transport.resume_reading()

    def give_up(self) -> None:
        """open() failed: hang up; the endpoint's on_close runs as after any end."""
        self._started = True
        if self._lost:
            self._end()
        else:
            self.abort()

    def pause_writing(self) -> None:
        # Past `max_buffered`: the client acknowledges output it does not read (flow control
        # keeps an honest client far below), or sends pings and reads no pongs.
        log.warning("dropping a WebSocket client that does not read what it is sent")
        self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._end()

    def _end(self) -> None:
        # Never before the endpoint's open() is done (start or give_up), as with Tornado.
        if self._started and not self._ended:
            self._ended = True
            self._endpoint.on_close()

    # -- from the client -----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if not self._started:  # open() is still running: hold frames back, as Tornado does
            self._held += data
            if self._transport is not None:
                self._transport.pause_reading()
            return
        if self._deaf:
            return
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return  # a big frame still arriving: no re-parse per packet
            data = bytes(self._buf)
            self._buf.clear()
        pos = self._parse(data)
        if pos < len(data) and not self._deaf:
            self._buf += data[pos:]

    @property
    def _deaf(self) -> bool:
        """Nothing more the client sends is handled."""
        return self._discarding or self._got_close or self._lost

    def _parse(self, data: bytes) -> int:
        """Handle every complete frame in `data`; return where the incomplete rest starts."""
        pos, end = 0, len(data)
        while not self._deaf:
            header = self._header(data, pos)
            if header is None:
                return pos
            b0, start, length = header
            if len(data) - start < length:
                self._need = start - pos + length
                return pos
            payload = data[start : start + length]
            if length:
                payload = websocket_mask(data[start - 4 : start], payload)
            pos = start + length
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
        return end

    def _header(self, data: bytes, pos: int) -> tuple[int, int, int] | None:
        """(first byte, payload start, payload length) of the frame at `pos`; None if the
        header is incomplete (`_need` says how much it takes) or refused (the client is done)."""
        if len(data) - pos < 2:
            self._need = 2
            return None
        b0, b1 = data[pos], data[pos + 1]
        length, head = b1 & 0x7F, 2
        if length >= 126:
            head = 4 if length == 126 else 10
            if len(data) - pos < head:
                self._need = head
                return None
            length = int.from_bytes(data[pos + 2 : pos + head], "big")
            if length >> 63:
                self._fail(CLOSE_PROTOCOL_ERROR, "bad frame: 64-bit length with its top bit set")
                return None
        control = b0 & 0x8
        if b0 & 0x70 or not b1 & 0x80 or (control and (length > 125 or not b0 & 0x80)):
            self._fail(CLOSE_PROTOCOL_ERROR, "bad frame: reserved bits, no mask or bad control")
            return None
        held = self._fragment_len if self._fragmented is not None and not control else 0
        if held + length > self._max_message:
            self._too_big()
            return None
        return b0, pos + head + 4, length

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode & 0x8:
            self._control(opcode, payload)
        elif opcode == OP_CONTINUATION:
            if self._fragmented is None:
                self._fail(CLOSE_PROTOCOL_ERROR, "continuation of nothing")
            else:
                self._fragment(fin, payload)
        elif opcode == OP_TEXT and self._fragmented is None:
            if not fin:
                self._fragmented = opcode
                self._fragment(fin, payload)
                return
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "text frame is not UTF-8")
                return
            self._deliver(text)
        elif opcode == OP_BINARY and self._fragmented is None:
            if fin:
                self._deliver(payload)
            else:
                self._fragmented = opcode
                self._fragment(fin, payload)
        else:
            self._fail(CLOSE_PROTOCOL_ERROR, "unknown opcode or interleaved message")

    def _fragment(self, fin: int, payload: bytes) -> None:
        self._fragment_len += len(payload)
        if self._fragmented == OP_BINARY:
            self._binary += payload
            if fin:
                message: str | bytes = bytes(self._binary)
                self._drop_fragments()
                self._deliver(message)
            return
        try:
            self._text.append(self._utf8.decode(payload, bool(fin)))
        except UnicodeDecodeError:  # now, not when the client chooses to end the message
            self._drop_fragments()
            self._fail(CLOSE_INVALID_DATA, "text message is not UTF-8")
            return
        if fin:
            message = "".join(self._text)
            self._drop_fragments()
            self._deliver(message)

    def _drop_fragments(self) -> None:
        self._fragmented = None
        self._fragment_len = 0
        self._binary.clear()
        self._text.clear()
        self._utf8.reset()

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_CLOSE:
            self._closed_by_client(payload)
        elif opcode == OP_PING:
            self._send(OP_PONG, payload)
        elif opcode == OP_PONG:
            # An unsolicited pong is allowed (RFC 6455 5.5.3) but says nothing of liveness.
            if self._ping_data is not None and payload == self._ping_data:
                self._ping_data = None
                self._call(self._endpoint.on_pong, payload)
        else:
            self._fail(CLOSE_PROTOCOL_ERROR, "unknown control opcode")

    def _closed_by_client(self, payload: bytes) -> None:
        if len(payload) == 1:
            self._fail(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
            return
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if not close_code_valid(code):
                self._fail(CLOSE_PROTOCOL_ERROR, f"close frame with code {code}")
                return
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "close reason is not UTF-8")
                return
            self.close_code = code
        self._got_close = True
        self.close(self.close_code)  # echoes the client's code (or none), then hangs up

    def _deliver(self, message: str | bytes) -> None:
        if not self._sent_close:  # else the endpoint has closed: what crosses our close is moot
            self._call(self._endpoint.on_message, message)

    def _call(self, method: Callable[[Any], None], arg: str | bytes) -> None:
        try:
            method(arg)
        except Exception:  # a bug in a handler must not take the server down
            self._endpoint.log_exception(*sys.exc_info())
            self.abort()

    def _fail(self, code: int, reason: str) -> None:
        log.warning("closing WebSocket: %s", reason)
        self._got_close = True  # nothing more is read, and close() hangs up after its frame
        self.close(code, reason)

    def _too_big(self) -> None:
        """1009, then read and drop the rest: closing now would reset the connection, and a
        reset makes the client's kernel drop the close frame (a browser reports 1006)."""
        self._discarding = True  # before close(): the drain has its own deadline
        self.close(CLOSE_TOO_BIG, "message too big")
        self._buf.clear()
        self._drop_fragments()
        self._end()  # the session detaches now, not when the client is done sending
        if self._transport is not None:
            self._transport.write_eof()  # after the close frame: the client sees EOF
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_WAIT_S, self.abort)
