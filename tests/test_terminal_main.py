"""`mixvllm-terminal` as a process: config errors, startup banner, SIGTERM shutdown."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import psutil
import pytest
from tornado import httpclient, websocket

from terminal_server import protocol
from terminal_server.__main__ import main
from terminal_server.app import make_context, public_url
from terminal_server.config import Config, ConfigError, load_config
from tests.conftest import require
from tests.support import wait_for, wait_for_async
from tests.terminal_support import ROOT, close_websocket, server_process


def test_defaults() -> None:
    cfg = load_config([], env={"SHELL": "/bin/zsh"})
    assert (cfg.host, cfg.port, cfg.autostart_chat) == ("127.0.0.1", 8888, True)
    assert cfg.shell == ("/bin/zsh",)
    assert cfg.token is None
    assert cfg.no_auth is False
    assert cfg.base_path == "/"
    assert cfg.is_loopback


def test_env_fallbacks_and_flag_precedence() -> None:
    env = {
        "MIXVLLM_TERMINAL_PORT": "9001",
        "MIXVLLM_TERMINAL_HOST": "0.0.0.0",
        "MIXVLLM_TERMINAL_AUTOSTART_CHAT": "0",
        "MIXVLLM_TERMINAL_TOKEN": "from-env-token",
        "MIXVLLM_TERMINAL_MAX_SESSIONS": "5",
        "MIXVLLM_TERMINAL_BASE_PATH": "term",
        "MIXVLLM_TERMINAL_ALLOWED_ORIGINS": "https://a.example, https://b.example/",
        "MIXVLLM_TERMINAL_IDLE_TIMEOUT": "30",
        "MIXVLLM_TERMINAL_SHELL": "bash -l",
    }
    cfg = load_config([], env=env)
    assert (cfg.port, cfg.host, cfg.autostart_chat, cfg.token) == (
        9001,
        "0.0.0.0",
        False,
        "from-env-token",
    )
    assert cfg.max_sessions == 5
    assert cfg.base_path == "/term/"
    assert cfg.allowed_origins == ("https://a.example", "https://b.example")
    assert cfg.idle_timeout == 30
    assert cfg.shell == ("bash", "-l")
    flags = load_config(["--port", "9002", "--autostart-chat", "--host", "127.0.0.1"], env=env)
    assert (flags.port, flags.autostart_chat, flags.host) == (9002, True, "127.0.0.1")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--no-auth", "--host", "0.0.0.0"], {}, "loopback"),
        (["--certfile", "c.pem"], {}, "go together"),
        (["--max-sessions", "0"], {}, "at least 1"),
        (["--token", "short"], {}, "at least 8"),
        (["--port", "70000"], {}, "out of range"),
        ([], {"MIXVLLM_TERMINAL_PORT": "eighty"}, "invalid literal"),
        ([], {"MIXVLLM_TERMINAL_AUTOSTART_CHAT": "maybe"}, "not a boolean"),
    ],
)
def test_bad_config_is_one_clear_error(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(argv, env=env)


def test_main_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-auth", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("mixvllm-terminal: error:")
    assert "Traceback" not in err


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        Config().port = 1  # type: ignore[misc]


def _server(*extra: str) -> AbstractContextManager[tuple[subprocess.Popen[str], str]]:
    return server_process("--no-autostart-chat", "--shell", "/bin/bash --norc --noprofile", *extra)


async def read_until(conn: websocket.WebSocketClientConnection, pattern: str) -> str:
    """Read stdout frames until `pattern` matches the output; return its first group."""
    out = ""
    while (match := re.search(pattern, out)) is None:
        msg = await asyncio.wait_for(conn.read_message(), 10)
        assert msg is not None
        frame = json.loads(msg)
        if frame[0] == protocol.STDOUT:
            out += frame[1]
    return match.group(1)


def test_sigterm_closes_clients_with_1001_reaps_children_and_exits_0() -> None:
    with _server() as (proc, url):
        port_base, token = url.split("?token=")
        ws_url = port_base.replace("http://", "ws://") + "ws"

        async def client() -> tuple[int | None, list[int]]:
            req = httpclient.HTTPRequest(ws_url, headers={"Authorization": f"Bearer {token}"})
            conn = await websocket.websocket_connect(req)
            conn.write_message(
                json.dumps([protocol.STDIN, "trap '' HUP; sleep 300 & echo bg-$!\r"])
            )
            bg = int(await read_until(conn, r"bg-(\d+)\r"))
            children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
            assert bg in children
            proc.send_signal(signal.SIGTERM)
            while await asyncio.wait_for(conn.read_message(), 10) is not None:
                pass
            await close_websocket(conn)
            return conn.close_code, children

        code, children = asyncio.run(client())
        assert code == protocol.CLOSE_GOING_AWAY
        assert proc.wait(timeout=15) == 0
        wait_for(lambda: not any(psutil.pid_exists(p) for p in children), 5, "children gone")
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "Traceback" not in err
        assert token not in err


def test_port_in_use_is_one_clear_error() -> None:
    with _server() as (_, url):
        port = url.split(":")[2].split("/")[0]
        busy = subprocess.run(
            [sys.executable, "-m", "terminal_server", "--port", port],
            cwd=ROOT,
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ},
        )
        assert busy.returncode == 1
        assert busy.stderr.startswith(f"mixvllm-terminal: error: cannot listen on 127.0.0.1:{port}")
        assert "Traceback" not in busy.stderr


def test_tls_serves_https_with_a_secure_cookie_and_a_terminal_over_wss(tmp_path: Path) -> None:
    require(shutil.which("openssl") is not None, "openssl CLI missing: no test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with _server("--certfile", str(cert), "--keyfile", str(key)) as (_, url):
        assert url.startswith("https://")
        base, token = url.split("?token=")

        async def fetch() -> httpclient.HTTPResponse:
            client = httpclient.AsyncHTTPClient()
            return await client.fetch(
                url, ca_certs=str(cert), validate_cert=False, follow_redirects=False,
                raise_error=False,
            )  # fmt: skip

        r = asyncio.run(fetch())
        assert r.code == 302
        assert "Secure" in r.headers["Set-Cookie"]

        # The terminal over TLS: the socket stays in Tornado's TLS stream (wsconn's adapter).
        # Its page's origin is https://, which a TLS server counts as its own.
        origin = base.rstrip("/")

        async def terminal() -> int | None:
            req = httpclient.HTTPRequest(
                base.replace("https://", "wss://") + "ws",
                headers={"Authorization": f"Bearer {token}", "Origin": origin},
                validate_cert=False,
            )  # fmt: skip
            conn = await websocket.websocket_connect(req)
            conn.write_message(json.dumps([protocol.STDIN, "echo over-$((6*7))-tls\r"]))
            assert await read_until(conn, r"(over-42-tls)") == "over-42-tls"
            conn.close(1000)
            while await asyncio.wait_for(conn.read_message(), 10) is not None:
                pass
            return conn.close_code

        assert asyncio.run(terminal()) == 1000  # the server echoed the client's close


def test_server_reaps_orphans_that_left_their_session() -> None:
    # A daemon-like orphan (own kernel session, parent gone) is reparented to the server,
    # which is a subreaper, and must not stay a zombie once it exits.
    with _server("--idle-timeout", "1") as (_, url):
        base, token = url.split("?token=")

        async def client() -> int:
            req = httpclient.HTTPRequest(
                base.replace("http://", "ws://") + "ws",
                headers={"Authorization": f"Bearer {token}"},
            )
            conn = await websocket.websocket_connect(req)
            cmd = "(setsid sleep 0.3 & echo orphan-$!)\r"
            conn.write_message(json.dumps([protocol.STDIN, cmd]))
            orphan = int(await read_until(conn, r"orphan-(\d+)\r"))
            # A zombie still exists: gone means reaped.
            await wait_for_async(lambda: not psutil.pid_exists(orphan), 10, "the orphan reaped")
            await close_websocket(conn)
            return orphan

        asyncio.run(client())


def test_public_url_names_the_banner_and_the_cookie() -> None:
    """Published elsewhere (compose maps 9000 -> 8888), the user's URL counts, not the bind."""
    cfg = load_config(["--port", "8888", "--public-url", "http://localhost:9000"], env={})
    assert cfg.public_url == "http://localhost:9000/"
    ctx = make_context(cfg)
    assert ctx.cookie_name == "mixvllm_token_9000"
    assert public_url(ctx) == f"http://localhost:9000/?token={ctx.token}"
    https = load_config([], env={"MIXVLLM_TERMINAL_PUBLIC_URL": "https://term.example/x/"})
    assert make_context(https).cookie_name == "mixvllm_token_443"
    assert make_context(load_config(["--port", "8890"], env={})).cookie_name.endswith("_8890")
    with pytest.raises(ConfigError, match="public-url"):
        load_config(["--public-url", "localhost:9000"], env={})


def test_the_server_runs_on_uvloop_where_installed() -> None:
    installed = importlib.util.find_spec("uvloop") is not None
    require(installed, "uvloop (the `fast` extra)")
    with _server() as (proc, url):
        port_base, token = url.split("?token=")
        ws_url = port_base.replace("http://", "ws://") + "ws?binary=1&ack=bytes"

        async def client() -> None:
            req = httpclient.HTTPRequest(ws_url, headers={"Authorization": f"Bearer {token}"})
            conn = await websocket.websocket_connect(req)
            conn.write_message(json.dumps([protocol.STDIN, "echo on-$((6*7))\r"]))
            out = b""
            while b"on-42" not in out:
                msg = await asyncio.wait_for(conn.read_message(), 10)
                assert msg is not None
                if isinstance(msg, bytes):
                    out += msg
            await close_websocket(conn)

        asyncio.run(client())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "event loop: uvloop" in err
        assert "Traceback" not in err


def test_the_server_freezes_its_start_up_objects_out_of_the_collector() -> None:
    # A full collection walks every tracked object with the loop stopped: with 200 sessions
    # the start-up's (modules, Tornado) made it a 50 ms stall in every session's echo.
    with _server() as (proc, _):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        m = re.search(r"garbage collector: (\d+) start-up objects frozen", proc.stderr.read())
        assert m, "no freeze reported"
        assert int(m.group(1)) > 10_000
