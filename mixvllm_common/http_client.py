"""One HTTP client for the programs, on the standard library's http.client: chat's requests
and the launcher's health checks go to the same servers the same way.

A server's URL becomes a Target; a connection goes through the proxy the environment names for
it (urllib's rules: $http_proxy, $https_proxy, $no_proxy), and a body is read by a deadline and
up to a bound, so a server that sends too much or too slowly cannot hold a caller. Stdlib only,
and light to import: `chat --help` and the container's health check pay for it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from dataclasses import dataclass

CONNECT_TIMEOUT_S = 10.0
BODY_LIMIT = 1 << 20  # an error page or a whole answer; more is not read
TransportError = (OSError, http.client.HTTPException)


class Timeout(Exception):
    """No byte within the time allowed; `started` says whether any body byte had come."""

    def __init__(self, started: bool) -> None:
        super().__init__("timed out")
        self.started = started


@dataclass(frozen=True)
class Target:
    https: bool
    host: str
    port: int | None
    prefix: str  # the API base's path, e.g. /v1

    @classmethod
    def parse(cls, base_url: str) -> Target:
        scheme, _, rest = base_url.partition("://")
        netloc, _, path = rest.partition("/")
        host, port = netloc.rsplit("@", 1)[-1], None
        if host.startswith("["):
            host, _, tail = host[1:].partition("]")
            port = int(tail[1:]) if tail.startswith(":") else None
        elif ":" in host:
            host, _, digits = host.rpartition(":")
            port = int(digits)
        return cls(scheme.lower() == "https", host, port, "/" + path.strip("/"))

    def path(self, endpoint: str) -> str:
        """The request target: a plain-HTTP proxy takes the absolute URL."""
        path = (self.prefix.rstrip("/") + endpoint) or "/"
        if self.https or self.proxy() is None:
            return path
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}{port}{path}"

    def proxy(self) -> tuple[str, int | None] | None:
        """The $http_proxy / $https_proxy that applies (urllib's rules, $no_proxy included)."""
        if not any(k.lower() in ("http_proxy", "https_proxy", "all_proxy") for k in os.environ):
            return None
        import urllib.request  # noqa: PLC0415 (only with a proxy set: 20 ms of imports)

        url = urllib.request.getproxies().get("https" if self.https else "http")
        if not url or urllib.request.proxy_bypass(self.host):
            return None
        proxy = Target.parse(url if "://" in url else "http://" + url)
        return proxy.host, proxy.port

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """A connected HTTP(S) connection; raises OSError when the server cannot be reached."""
        conn: http.client.HTTPConnection
        proxy = self.proxy()
        host, port = proxy or (self.host, self.port)
        if self.https:
            conn = http.client.HTTPSConnection(host, port, timeout=timeout)
            if proxy:
                conn.set_tunnel(self.host, self.port)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.connect()
        except BaseException:
            conn.close()
            raise
        return conn


def read_body(
    response: http.client.HTTPResponse, sock: socket.socket | None, deadline: float
) -> bytes:
    """The whole body (up to BODY_LIMIT), by the deadline; raises Timeout after it."""
    parts: list[bytes] = []
    size = 0
    while size < BODY_LIMIT:
        if sock is not None:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = response.read1(BODY_LIMIT - size)
        except TimeoutError as err:
            raise Timeout(started=size > 0) from err
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b"".join(parts)


def request(
    url: str,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    body: object = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> tuple[int, bytes]:
    """GET `url`, or POST `body` as JSON, on a fresh connection; (status, body up to
    BODY_LIMIT), all by `timeout`. Raises TransportError or Timeout."""
    deadline = time.monotonic() + timeout
    target = Target.parse(url)
    conn = target.connect(min(timeout, connect_timeout))
    try:
        if conn.sock is not None:
            conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
        data = None if body is None else json.dumps(body).encode()
        sent = {**(headers or {}), **({"Content-Type": "application/json"} if data else {})}
        conn.request("GET" if data is None else "POST", target.path(""), body=data, headers=sent)
        response = conn.getresponse()
        return response.status, read_body(response, conn.sock, deadline)
    finally:
        conn.close()
