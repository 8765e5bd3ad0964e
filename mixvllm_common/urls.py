"""The one place that turns a user's model server URL into the forms the code needs."""

from __future__ import annotations


def server_root(url: str) -> str:
    """`h:8000`, `http://h:8000/`, `http://h:8000/v1` and `.../v1/` all become `http://h:8000`."""
    root = url.strip().rstrip("/")
    if "://" not in root:
        root = "http://" + root
    return root.removesuffix("/v1")


def api_base(url: str) -> str:
    """The OpenAI API base of any form `server_root` accepts: `http://h:8000/v1`."""
    return server_root(url) + "/v1"
