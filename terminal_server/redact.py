"""The last line of defence for the token: blank it out of every log record.

Our own log lines hold only methods and paths, but Tornado's (malformed requests, bad header
values) quote whatever the client sent, and a client may send the token anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

LOGGERS = ("mixvllm.terminal", "tornado.access", "tornado.application", "tornado.general")
MASK = "[token]"


def _forms(token: str) -> set[str]:
    """The token as a log line may show it: raw, percent-encoded, Latin-1-decoded, repr'd."""
    utf8 = token.encode()
    latin = utf8.decode("latin-1")  # how Tornado decodes header bytes
    return {
        token,
        quote(token, safe=""),
        quote_plus(token),
        quote(token),
        repr(token)[1:-1],
        repr(utf8)[2:-1],
        latin,
        repr(latin)[1:-1],
    }


class TokenFilter(logging.Filter):
    def __init__(self, token: str) -> None:
        super().__init__()
        forms = sorted(_forms(token), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, forms)), re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        redacted = self._pattern.sub(MASK, message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_text:
            record.exc_text = self._pattern.sub(MASK, record.exc_text)
        return True


@contextlib.contextmanager
def filtering_logs(log_filter: logging.Filter) -> Iterator[None]:
    """`log_filter` on every logger the server writes to, while the block runs."""
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for logger in loggers:
        logger.addFilter(log_filter)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(log_filter)


@contextlib.contextmanager
def token_kept_out_of_logs(token: str | None) -> Iterator[None]:
    """The server's token out of every log record, for the server's lifetime."""
    if token is None:
        yield
        return
    with filtering_logs(TokenFilter(token)):
        yield
