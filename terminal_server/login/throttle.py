"""Failed logins, throttled per user name and per address.

The first few failures of a key cost nothing; each one after them doubles the time the key
must wait before its next attempt (up to MAX_DELAY). A key's record is forgotten FORGET
seconds after its last failure. Memory is bounded: at most `max_keys` records, the stalest
dropped first.

An attempt counts as a failure when it starts (`attempt`), so that many attempts sent at once
cannot all pass before the first one fails; a success then takes its own back and clears the
user name's record, never the address's other failures (someone with one account must not
reset the count of their guesses at another's).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

FREE_PER_USER = 5
FREE_PER_ADDRESS = 20
BASE_DELAY = 2.0  # seconds, doubled per failure past the free ones
MAX_DELAY = 900.0
FORGET = 3600.0


@dataclass
class _Record:
    failures: int
    last: float
    until: float  # no attempt before this time


class Throttle:
    def __init__(self, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self._clock = clock
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()

    def retry_after(self, user: str, address: str) -> float:
        """Seconds until `user` from `address` may try again; 0 when now."""
        now = self._clock()
        wait = 0.0
        for key in (("user", user), ("address", address)):
            record = self._records.get(key)
            if record is None:
                continue
            if now - record.last >= FORGET:
                del self._records[key]
                continue
            wait = max(wait, record.until - now)
        return max(0.0, wait)

    def attempt(self, user: str, address: str) -> None:
        """An attempt begins: it counts as a failure until `succeeded`."""
        now = self._clock()
        for key, free in _keys(user, address):
            record = self._records.pop(key, None)
            if record is None or now - record.last >= FORGET:
                record = _Record(0, now, now)
            record.failures += 1
            _hold(record, free, now)
            self._records[key] = record  # the most recent last
            while len(self._records) > self.max_keys:
                self._records.popitem(last=False)

    def failed(self, user: str, address: str) -> None:
        """The attempt failed: its wait runs from now (a password check takes seconds)."""
        now = self._clock()
        for key, free in _keys(user, address):
            record = self._records.get(key)
            if record is not None:
                _hold(record, free, now)

    def succeeded(self, user: str, address: str) -> None:
        self._records.pop(("user", user), None)
        record = self._records.get(("address", address))
        if record is not None:
            record.failures = max(0, record.failures - 1)

    def __len__(self) -> int:
        return len(self._records)


def _keys(user: str, address: str) -> tuple[tuple[tuple[str, str], int], ...]:
    return ((("user", user), FREE_PER_USER), (("address", address), FREE_PER_ADDRESS))


def _hold(record: _Record, free: int, now: float) -> None:
    record.last = now
    excess = record.failures - free
    if excess > 0:
        record.until = now + min(MAX_DELAY, BASE_DELAY * 2 ** min(excess - 1, 20))
