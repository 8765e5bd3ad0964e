"""Per-user model keys: what a team session finds in its environment instead of the model
server's key, and how the pass-through tells whose key a request carries.

A key is `mxu.<user>.<mac>`, the mac an HMAC-SHA256 of the user name under a secret made at
each start and kept only in this process's memory: nothing to store, nothing on disk to
steal, and a restart (which ends every session) retires every key. Knowing your own key and
another user's name tells nothing about theirs. Checked in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from mixvllm_common.defaults import CLIENT_API_KEY_ENVS, MODEL_SERVER_URL_ENV

from ..config import Config

PREFIX = "mxu"
MAX_KEY_CHARS = 128  # a longer Authorization value is not one of ours: no HMAC spent on it


class ModelKeys:
    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, user: str) -> str:
        digest = hmac.new(self._secret, user.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def key_for(self, user: str) -> str:
        return f"{PREFIX}.{user}.{self._mac(user)}"

    def user_for(self, key: str | None) -> str | None:
        """The user whose key this is, or None (a missing, malformed or forged key)."""
        if not key or len(key) > MAX_KEY_CHARS:
            return None
        prefix, _, rest = key.partition(".")
        user, _, mac = rest.rpartition(".")
        if prefix != PREFIX or not user:
            return None
        if not hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(user).encode()):
            return None
        return user


def pass_through_url(config: Config) -> str:
    """The pass-through's address as a session on this machine reaches it (loopback when the
    server listens on every address or on loopback; chat adds `/v1`)."""
    host = config.host.strip("[]")
    if host in ("", "0.0.0.0", "localhost"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    return f"{config.scheme}://{host}:{config.port}{config.base_path}model"


def session_model_env(config: Config, keys: ModelKeys, user: str) -> dict[str, str]:
    """What a team session's environment says about the model: the pass-through and the
    user's own key, in the variable `chat` reads first."""
    return {
        MODEL_SERVER_URL_ENV: pass_through_url(config),
        CLIENT_API_KEY_ENVS[0]: keys.key_for(user),
    }
