"""A session's recent output, bounded in bytes, replayed to a client that (re)attaches."""

from __future__ import annotations

from collections import deque

MERGE_MAX = 4096  # small chunks are merged up to this size


class Scrollback:
    """The last `limit` bytes of output, kept as the chunks they were read in."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._len = 0  # bytes kept, not counting the skipped head
        self._skip = 0  # bytes of the oldest chunk that are already forgotten

    def add(self, data: bytes) -> None:
        if self._limit <= 0:
            return
        chunks = self._chunks
        if chunks and len(chunks[-1]) + len(data) <= MERGE_MAX:
            # Echo arrives a byte at a time: one object per keystroke would cost ~40 bytes
            # of memory per byte kept. A copy of under 4 KiB is cheaper than that.
            chunks[-1] += data
        else:
            chunks.append(data)
        self._len += len(data)
        excess = self._len - self._limit
        while excess > 0:
            # Trim by moving an offset into the oldest chunk: slicing it would copy it all.
            head_left = len(self._chunks[0]) - self._skip
            if head_left <= excess:
                self._chunks.popleft()
                self._skip = 0
                self._len -= head_left
                excess -= head_left
            else:
                self._skip += excess
                self._len -= excess
                excess = 0

    def replay(self) -> bytes:
        data = b"".join(self._chunks)[self._skip :]
        # Trims and read boundaries cut anywhere: skip a partial UTF-8 character at the head
        # here, on the rare replay, instead of on every add.
        start = 0
        while start < min(len(data), 3) and data[start] & 0xC0 == 0x80:
            start += 1
        return data[start:] if start else data
