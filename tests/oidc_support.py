"""A real OpenID Connect provider for the tests (panva's oidc-provider under node, in
tests/oidc/), and a user's browser driven over plain HTTP through its login form."""

from __future__ import annotations

import contextlib
import html.parser
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx

from terminal_server.login.oidc_config import SECRET_ENV
from tests.conftest import require
from tests.support import free_port, wait_for
from tests.team_support import require_namespaces
from tests.terminal_support import server_process

HERE = Path(__file__).parent / "oidc"
CLIENT_ID = "mixvllm"
CLIENT_SECRET = "test-client-secret-0123456789abcdef"


@dataclass(frozen=True)
class Provider:
    issuer: str
    port: int
    log: Path


def require_provider() -> None:
    require(shutil.which("node") is not None, "node, for the test OpenID Connect provider")
    require((HERE / "node_modules" / "oidc-provider").is_dir(),
            "tests/oidc's oidc-provider (make test-deps: npm ci in tests/oidc)")  # fmt: skip


@contextlib.contextmanager
def oidc_provider(
    port: int, redirect_uri: str, tmp: Path, *, misbehave: str = "", alg: str = "RS256"
) -> Iterator[Provider]:
    """The provider on 127.0.0.1:`port` with a fresh signing key (and key id)."""
    require_provider()
    issuer = f"http://127.0.0.1:{port}"
    log = tmp / f"oidc-provider-{port}-{misbehave or 'ok'}-{alg}.log"
    env = {**os.environ, "PORT": str(port), "ISSUER": issuer, "CLIENT_SECRET": CLIENT_SECRET,
           "REDIRECT_URI": redirect_uri, "MISBEHAVE": misbehave, "ALG": alg}  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["node", str(HERE / "provider.mjs")], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: "ready" in log.read_text() or proc.poll() is not None, 30, "provider")
        assert proc.poll() is None, f"the provider exited: {log.read_text()}"
        yield Provider(issuer, port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Form(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = a.get("action") or ""
        elif tag == "input" and a.get("name") and a.get("type") == "hidden":
            self.fields[str(a["name"])] = a.get("value") or ""


def sign_in(client: httpx.Client, url: str, login: str, stop: str) -> str:
    """Follow `url` through the provider as `login` (its dev form takes any password) until a
    redirect reaches an address starting with `stop`; return that address, unvisited."""
    response = client.get(url)
    for _ in range(20):
        if response.is_redirect:
            url = urljoin(str(response.url), response.headers["location"])
            if url.startswith(stop):
                return url
            response = client.get(url)
            continue
        assert response.status_code == 200, f"{response.status_code}: {response.text[:300]}"
        form = _Form()
        form.feed(response.text)
        assert form.action is not None, f"no form on {response.url}: {response.text[:300]}"
        data = {**form.fields, "login": login, "password": "any password"}
        response = client.post(urljoin(str(response.url), form.action), data=data)
    raise AssertionError(f"no redirect to {stop} after 20 steps")


@contextlib.contextmanager
def throwaway_etc(accounts: dict[str, int]) -> Iterator[tuple[Path, list[str]]]:
    """A copy of the whole /etc with `accounts` (name -> uid, homes 0700) added, and the prefix
    that runs a command in a mount namespace where that copy is /etc: `useradd` there can
    rename its files (a bind-mounted single file cannot be renamed over), and writes only the
    copy. The host's accounts are never touched."""
    require_namespaces()
    root = Path(tempfile.mkdtemp(prefix="mixvllm-oidc-"))
    try:
        root.chmod(0o755)
        subprocess.run(["cp", "-a", "/etc", str(root / "etc")], check=True)
        for name, uid in accounts.items():
            home = root / "home" / name
            home.mkdir(parents=True)
            os.chown(home, uid, uid)
            home.chmod(0o700)
            with (root / "etc" / "passwd").open("a") as f:
                f.write(f"{name}:x:{uid}:{uid}:{name}:{home}:/bin/bash\n")
            with (root / "etc" / "group").open("a") as f:
                f.write(f"{name}:x:{uid}:\n")
        prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                  f'mount --bind {root / "etc"} /etc && exec "$@"', "sh"]  # fmt: skip
        yield root, prefix
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class OidcStack:
    url: str  # the server's public URL
    pid: int
    root: Path  # the namespace's /etc copy and the homes
    audit: Path
    log: Path  # the server's stderr

    def audit_events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


@contextlib.contextmanager
def oidc_stack(accounts: dict[str, int], *args: str, misbehave: str = "") -> Iterator[OidcStack]:
    """The provider, and the server with `--auth oidc` as root in a namespace whose /etc is a
    throwaway copy holding `accounts`; users in the provider's group `team` may log in."""
    port, provider_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/"
    with (
        tempfile.TemporaryDirectory(prefix="mixvllm-oidc-test-") as tmp,
        oidc_provider(
            provider_port, url + "login/oidc/callback", Path(tmp), misbehave=misbehave
        ) as provider,
        throwaway_etc(accounts) as (root, in_namespace),
    ):
        audit, log = Path(tmp) / "audit.jsonl", Path(tmp) / "server.log"
        argv = [
            "--port", str(port), "--public-url", url, "--auth", "oidc",
            "--oidc-issuer", provider.issuer, "--oidc-client-id", CLIENT_ID,
            "--oidc-scopes", "openid profile groups",
            "--oidc-username-map", "lowercase,strip-domain=example.org",
            "--oidc-uid-range", "23000-23099", "--oidc-home-base", str(root / "home"),
            "--allowed-groups", "team", "--audit-log", str(audit),
            "--no-autostart-chat", "--shell", "/bin/bash --norc --noprofile", *args,
        ]  # fmt: skip
        with (
            log.open("w") as err,
            server_process(
                *argv, env={SECRET_ENV: CLIENT_SECRET}, prefix=in_namespace, stderr=err.fileno()
            ) as (proc, _),
        ):
            yield OidcStack(url, proc.pid, root, audit, log)
