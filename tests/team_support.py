"""Team mode's real parts for the tests: Unix accounts that exist only inside a throwaway mount
namespace, and nginx with basic auth in front of the server.

The accounts are bind-mounted copies of /etc/passwd, /etc/group and /etc/shadow seen only by
the server's namespace (`unshare --mount`); the host's files are never written, and the
mounts end with the server's process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require
from tests.support import free_port, wait_for, wait_for_async
from tests.terminal_support import ROOT, Client, server_process

NGINX = "/usr/sbin/nginx"
PROXY_SOURCE = "127.0.0.2"  # nginx connects from here: the one trusted proxy address


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    password: str
    home: Path

    @property
    def basic_auth(self) -> tuple[str, str]:
        return self.name, self.password


def require_pamela() -> None:
    require(importlib.util.find_spec("pamela") is not None, "pamela (pip install -e '.[team]')")


def require_namespaces() -> None:
    require(os.geteuid() == 0, "root, for a mount namespace with test-only accounts")
    require(shutil.which("unshare") is not None, "unshare (util-linux)")


def _shadow_hash(password: str) -> str:
    return subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=password,
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def _pam_dir(etc: Path, service: str) -> None:
    """A copy of /etc/pam.d with `service` as the project ships it (deploy/pam.d/mixvllm)."""
    shutil.copytree("/etc/pam.d", etc / "pam.d", symlinks=True)
    shutil.copy(ROOT / "deploy" / "pam.d" / "mixvllm", etc / "pam.d" / service)


@contextlib.contextmanager
def throwaway_accounts(
    names: Sequence[str],
    first_uid: int = 2001,
    *,
    system: Sequence[str] = (),
    expired: Sequence[str] = (),
    pam_service: str | None = None,
) -> Iterator[tuple[list[Account], list[str]]]:
    """Accounts (homes 0700 under a temporary folder; their passwords hashed in the shadow
    file, as `passwd` writes them) and the prefix that runs a command in a mount namespace
    where they exist. `system` accounts get uids below 1000; `expired` ones (of `names`)
    expired on 2 January 1970 (the shadow file's account expiry); `pam_service` adds that PAM
    service to the namespace's /etc/pam.d. Everything is removed afterwards."""
    require_namespaces()
    root = Path(tempfile.mkdtemp(prefix="mixvllm-team-"))
    try:
        root.chmod(0o755)
        accounts = []
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        shadow = Path("/etc/shadow").read_text() if Path("/etc/shadow").exists() else ""
        people = [(name, first_uid + i) for i, name in enumerate(names)]
        for i, name in enumerate(system):
            people.append((name, 901 + i))
        for name, uid in people:
            home = root / "home" / name
            home.mkdir(parents=True)
            os.chown(home, uid, uid)
            home.chmod(0o700)
            accounts.append(Account(name, uid, f"pw-{name}-0123", home))
            passwd += f"{name}:x:{uid}:{uid}:{name}:{home}:/bin/bash\n"
            group += f"{name}:x:{uid}:\n"
            expiry = "1" if name in expired else ""
            hashed = _shadow_hash(accounts[-1].password)
            shadow += f"{name}:{hashed}:20000:0:99999:7::{expiry}:\n"
        # A shared supplementary group, so the session's groups can be checked.
        group += f"team:x:{first_uid + 100}:{','.join(names)}\n"
        etc = root / "etc"
        etc.mkdir()
        for file, text in (("passwd", passwd), ("group", group), ("shadow", shadow)):
            (etc / file).write_text(text)
        (etc / "shadow").chmod(0o600)
        files = ["passwd", "group", "shadow"]
        if pam_service is not None:
            _pam_dir(etc, pam_service)
            files.append("pam.d")
        mounts = " && ".join(f"mount --bind {etc / f} /etc/{f}" for f in files)
        prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                  f'{mounts} && exec "$@"', "sh"]  # fmt: skip
        yield accounts, prefix
    finally:
        shutil.rmtree(root, ignore_errors=True)


def reachable_python(scratch: Path) -> str:
    """Shell lines that, inside the namespace, let the accounts run this Python when it lives
    under a home they may not enter (/root/.pyenv): a 0755 tmpfs over that home with the
    Python folder bound back into it (through `scratch`, a 0755 folder). Only the namespace
    sees it."""
    top = Path(sys.base_prefix).resolve()
    blocked = next(
        (p for p in reversed(top.parents) if p != Path("/") and not p.stat().st_mode & 0o001),
        None,
    )
    if blocked is None:
        return "true"
    keep = top.relative_to(blocked).parts[0]
    saved = scratch / "saved"
    saved.mkdir()
    return (
        f"mount --bind {blocked / keep} {saved} && "
        f"mount -t tmpfs -o mode=0755 tmpfs {blocked} && mkdir {blocked / keep} && "
        f"mount --bind {saved} {blocked / keep}"
    )


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@contextlib.contextmanager
def nginx_proxy(backend_port: int, token: str, accounts: Sequence[Account]) -> Iterator[int]:
    """nginx on a loopback port: basic auth against `accounts`, then the user name in
    X-Forwarded-User and the server's token in Authorization, sent from PROXY_SOURCE."""
    require(os.access(NGINX, os.X_OK), "nginx (make system-packages)")
    port = free_port()
    d = Path(tempfile.mkdtemp(prefix="mixvllm-nginx-"))
    try:
        lines = []
        for account in accounts:
            hashed = subprocess.run(
                ["openssl", "passwd", "-apr1", "-stdin"], input=account.password,
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            lines.append(f"{account.name}:{hashed}\n")
        (d / "htpasswd").write_text("".join(lines))
        conf = NGINX_CONF.format(dir=d, port=port, backend=backend_port, token=token,
                                 source=PROXY_SOURCE)  # fmt: skip
        (d / "nginx.conf").write_text(conf)
        proc = subprocess.Popen(
            [NGINX, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for(lambda: _port_open(port) or proc.poll() is not None, 20, "nginx")
            assert proc.poll() is None, f"nginx exited: {proc.communicate()[1]}"
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass(frozen=True)
class TeamStack:
    proxy_port: int  # nginx: what users open
    server_port: int
    server_pid: int
    alice: Account
    bob: Account
    log: Path  # the server's stderr

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}/"


@contextlib.contextmanager
def team_stack(token: str, *args: str) -> Iterator[TeamStack]:
    """alice and bob (throwaway accounts), the server in team mode as root in their
    namespace, trusting only nginx's source address, and nginx in front of it."""
    with (
        throwaway_accounts(["alice", "bob"]) as (accounts, in_namespace),
        tempfile.NamedTemporaryFile(prefix="mixvllm-team-log-") as log,
    ):
        env = {"MIXVLLM_TERMINAL_TOKEN": token, "VLLM_API_KEY": "sk-server-secret-0123"}
        argv = ["--auth", "proxy", "--trusted-proxies", f"{PROXY_SOURCE}/32",
                "--no-autostart-chat", "--shell", "/bin/bash --norc --noprofile",
                *args]  # fmt: skip
        with server_process(*argv, env=env, prefix=in_namespace, stderr=log.fileno()) as (
            proc,
            url,
        ):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            with nginx_proxy(port, token, accounts) as proxy_port:
                yield TeamStack(proxy_port, port, proc.pid, *accounts, Path(log.name))


async def say(client: Client, command: str, marker: str) -> str:
    """Run `command`, which prints `MARKER<value>`; return the value (the echoed command line
    has `MARKER<$(...)>` or `MARKER<\\1>`, which the pattern skips)."""
    start = len(client.output)
    client.type(command + "\r")
    pattern = re.compile(rf"{marker}<([^<>$\\]*)>")
    await wait_for_async(lambda: pattern.search(client.output, start), 10, marker)
    match = pattern.search(client.output, start)
    assert match is not None
    return match.group(1)


NGINX_CONF = """
daemon off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        auth_basic "mixvllm";
        auth_basic_user_file {dir}/htpasswd;
        location / {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_bind {source};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-User $remote_user;
            proxy_set_header Authorization "Bearer {token}";
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class PamStack:
    url: str  # the server, straight: users log in on its login page
    server_pid: int
    alice: Account
    bob: Account
    carol: Account  # for the throttle, so the others' logins stay unthrottled
    dave: Account  # the right password, but the account has expired
    sysop: Account  # uid 901: a system account with a valid password
    log: Path  # the server's stderr
    audit: Path


@contextlib.contextmanager
def pam_stack(
    *args: str, env: Mapping[str, str] | None = None, chat: bool = False
) -> Iterator[PamStack]:
    """The server with `--auth pam` as root in a namespace where alice, bob, carol, dave and
    sysop exist with real password hashes and the project's PAM service file. `env` adds to
    (or replaces) the server's environment; `chat`: sessions start the default `chat` (the
    venv's), which the accounts may run (reachable_python)."""
    people = ["alice", "bob", "carol", "dave"]
    with (
        throwaway_accounts(people, system=["sysop"], expired=["dave"], pam_service="mixvllm") as (
            accounts,
            in_namespace,
        ),
        tempfile.TemporaryDirectory(prefix="mixvllm-pam-") as state,
    ):
        log, audit = Path(state, "server.log"), Path(state, "audit.jsonl")
        env = {"VLLM_API_KEY": "sk-server-secret-0123", "MIXVLLM_TERMINAL_AUDIT_LOG": str(audit),
               **(env or {})}  # fmt: skip
        prefix = in_namespace
        if chat:
            reach = reachable_python(Path(state))
            prefix = [*in_namespace, "sh", "-c", f'{reach} && exec "$@"', "sh"]
        argv = ["--auth", "pam", *([] if chat else ["--no-autostart-chat"]),
                "--shell", "/bin/bash --norc --noprofile", *args]  # fmt: skip
        with (
            log.open("w") as err,
            server_process(*argv, env=env, prefix=prefix, stderr=err.fileno()) as (
                proc,
                url,
            ),
        ):
            yield PamStack(url, proc.pid, *accounts, log, audit)
