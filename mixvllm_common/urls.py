"""The one place that turns a user's model server URL into the forms the code needs."""

from __future__ import annotations


def http_url(text: str) -> str:
    """`text`, if it is a model server URL: http://, https://, or a bare `host[:port]`."""
    scheme, sep, _ = text.strip().partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        raise ValueError(f"the scheme {scheme}:// is not http:// or https://")
    return text


def server_root(url: str) -> str:
    """`h:8000`, `http://h:8000/`, `http://h:8000/v1` and `.../v1/` all become `http://h:8000`."""
    root = url.strip().rstrip("/")
    if "://" not in root:
        root = "http://" + root
    return root.removesuffix("/v1")


def api_base(url: str) -> str:
    """The OpenAI API base of any form `server_root` accepts: `http://h:8000/v1`."""
    return server_root(url) + "/v1"


def is_loopback(url: str) -> bool:
    """True for a server on this machine (localhost, 127.x, ::1): the one the launcher runs."""
    rest = server_root(url).split("://", 1)[1].split("/", 1)[0]
    host = rest.rsplit("@", 1)[-1]
    host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    return host.lower() in ("localhost", "::1", "0.0.0.0") or host.startswith("127.")
