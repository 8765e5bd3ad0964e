"""--session-user: sessions run as another uid, which can neither read the server's secrets
nor signal it, and closing a session still kills all of its processes.

The server runs as `daemon` with only the capabilities compose gives it (via setpriv), the
sessions as `nobody`; creating those processes needs root.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys

import psutil
from tornado import httpclient, websocket

from terminal_server import protocol
from tests.conftest import require
from tests.support import wait_for
from tests.terminal_support import ROOT, TOKEN, server_process

SERVER_USER, SESSION_USER = "daemon", "nobody"
CAPS = "+chown,+kill,+setgid,+setuid"
SYSTEM_PYTHON = "/usr/bin/python3"


def _require_root() -> None:
    require(os.geteuid() == 0, "root, to run the server and its sessions as other users")
    require(shutil.which("setpriv") is not None, "setpriv (util-linux)")
    require(os.access(SYSTEM_PYTHON, os.X_OK), f"{SYSTEM_PYTHON} for the session user")


def _as_server(caps: str) -> list[str]:
    """setpriv: the server as SERVER_USER with exactly `caps`, no-new-privileges as in compose."""
    return [
        "setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--clear-groups",
        f"--inh-caps={caps or '-all'}", f"--ambient-caps={caps or '-all'}",
        f"--bounding-set=-all{',' + caps if caps else ''}", "--no-new-privs",
    ]  # fmt: skip


class Shell:
    def __init__(self, conn: websocket.WebSocketClientConnection) -> None:
        self.conn = conn
        self.out = ""

    async def run(self, command: str, tag: str) -> tuple[str, int]:
        """Run `command`; return what it printed and its exit status."""
        start = len(self.out)
        self.conn.write_message(json.dumps([protocol.STDIN, f"{command}; echo {tag}:$?\r"]))
        pattern = re.compile(rf"[\r\n]{tag}:(\d+)")
        while (match := pattern.search(self.out, start)) is None:
            try:
                msg = await asyncio.wait_for(self.conn.read_message(), 10)
            except TimeoutError:
                raise AssertionError(f"no {tag}: {self.out[start:]!r}") from None
            assert msg is not None, self.out
            frame = json.loads(msg) if isinstance(msg, str) else [protocol.STDOUT, msg.decode()]
            if frame[0] == protocol.STDOUT:
                self.out += frame[1]
        return self.out[start : match.start()], int(match.group(1))


def test_sessions_run_as_the_session_user_and_cannot_reach_the_server() -> None:
    _require_root()
    session_uid = pwd.getpwnam(SESSION_USER).pw_uid
    assert pwd.getpwnam(SERVER_USER).pw_uid != session_uid
    env = {"MIXVLLM_TERMINAL_TOKEN": TOKEN, "MIXVLLM_TERMINAL_SESSION_USER": SESSION_USER}
    argv = ["--no-autostart-chat", "--shell", "/bin/bash --norc --noprofile"]
    with server_process(*argv, env=env, prefix=_as_server(CAPS)) as (proc, url):
        ws_url = url.split("?")[0].replace("http://", "ws://") + "ws"

        async def session() -> int:
            req = httpclient.HTTPRequest(ws_url, headers={"Authorization": f"Bearer {TOKEN}"})
            shell = Shell(await websocket.websocket_connect(req))
            out, _ = await shell.run("id -u", "uid")
            assert out.endswith(f"{session_uid}\r")
            caps, _ = await shell.run("grep -E '^Cap(Prm|Eff|Amb)' /proc/self/status", "caps")
            assert caps.count("0000000000000000") == 3, caps
            assert (await shell.run(f"cat /proc/{proc.pid}/environ", "env"))[1] != 0
            assert (await shell.run(f"kill {proc.pid}", "kill"))[1] != 0
            assert (await shell.run('test "$USER:$HOME" = nobody:/nonexistent', "home"))[1] == 0
            folder, _ = await shell.run('stat -c "%u %a" "$MIXVLLM_CHAT_EXPORT"', "export")
            assert folder.endswith(f"{session_uid} 2770\r")
            # chat's own export code, run as the session user, writes what the server serves.
            export = (
                "import os; from chat_cli.export import export; from chat_cli.conversation import "
                "Conversation, Message; export(Conversation(messages=[Message('user', "
                "'hello from the session user')]), os.environ)"
            )
            # The system's python: the session user cannot reach the test venv's interpreter
            # (under /root here); chat_cli.export needs only the standard library.
            run_export = f"cd {ROOT} && {SYSTEM_PYTHON} -c {shlex.quote(export)}"
            assert (await shell.run(run_export, "chat"))[1] == 0
            sid = (await shell.run('basename "$MIXVLLM_CHAT_EXPORT"', "sid"))[0].split()[-1]
            client = httpclient.AsyncHTTPClient()
            try:
                reply = await client.fetch(
                    f"{url.split('?')[0]}api/chat?session={sid}",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    raise_error=False,
                )
            finally:
                client.close()
            assert reply.code == 200, reply.body
            assert b"hello from the session user" in reply.body
            out, _ = await shell.run("(trap '' HUP; exec sleep 300) & echo bg-$!", "bg")
            match = re.search(r"bg-(\d+)", out)
            assert match is not None
            survivor = int(match.group(1))
            assert psutil.Process(survivor).uids().real == session_uid
            # The shell exits: the server ends the session, HUP (ignored) then TERM.
            shell.conn.write_message(json.dumps([protocol.STDIN, "exit\r"]))
            while await asyncio.wait_for(shell.conn.read_message(), 10) is not None:
                pass
            shell.conn.close()
            return survivor

        survivor = asyncio.run(session())
        wait_for(lambda: not psutil.pid_exists(survivor), 10, "the session's processes gone")
        assert proc.poll() is None, "a session's kill reached the server"


def test_a_server_without_the_capabilities_says_so_in_one_line() -> None:
    _require_root()
    result = subprocess.run(
        [*_as_server(""), sys.executable, "-m", "terminal_server", "--port", "0",
         "--session-user", SESSION_USER],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mixvllm-terminal: error: --session-user {SESSION_USER} needs the capabilities "
        "CHOWN, KILL, SETGID, SETUID; this server lacks CHOWN, KILL, SETGID, SETUID "
        "(run it as root, or add them: compose `cap_add`)"
    ]
