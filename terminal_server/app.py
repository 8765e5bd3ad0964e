"""The Tornado application and the serve loop (signals, startup banner, clean shutdown)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from tornado import netutil, web

from . import protocol, session_user
from .chat_export import ChatExportHandler
from .config import Config
from .context import Context
from .file_handlers import DownloadHandler, UploadHandler
from .gate import Gate, GatedHTTPServer, Limits, make_server
from .handlers import (
    GuardedStaticHandler,
    HealthHandler,
    MetricsHandler,
    ModelStatusHandler,
    PageHandler,
    TermSocket,
    log_request,
)
from .login.logins import LoginStore
from .login.oidc import oidc_routes
from .login.routes import login_routes
from .metrics import Metrics
from .model_proxy.credentials import session_model_env
from .model_proxy.handler import model_routes
from .model_proxy.usage import Usage
from .model_status import ModelStatusPoller
from .redact import token_kept_out_of_logs
from .sessions import SessionManager
from .share_handlers import make_registry, share_routes
from .team.admin_handlers import admin_routes
from .team.audit import AuditLog

log = logging.getLogger("mixvllm.terminal")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
VENDOR_SUBDIR = Path("node_modules", "@xterm")


class StartupError(RuntimeError):
    """The server cannot start; the message is meant for the operator."""


def make_app(ctx: Context) -> web.Application:
    base = ctx.config.base_path
    vendor = ctx.static_dir / VENDOR_SUBDIR
    kw: dict[str, Any] = {"ctx": ctx}
    routes: list[Any] = [
        (base, PageHandler, kw),
        (base + "ws", TermSocket, kw),
        (base + "healthz", HealthHandler, kw),
        (base + "metrics", MetricsHandler, kw),
        (base + "api/status", ModelStatusHandler, kw),
        (base + "api/chat", ChatExportHandler, kw),
        (base + "api/upload", UploadHandler, kw),
        (base + "api/download", DownloadHandler, kw),
        (
            base + r"static/(terminal\.js|terminal\.css)",
            GuardedStaticHandler,
            {"path": str(ctx.static_dir), **kw},
        ),
        (base + r"vendor/(.*)", GuardedStaticHandler, {"path": str(vendor), **kw}),
    ]
    routes += share_routes(ctx)
    routes += oidc_routes(ctx)  # login/oidc.py (--auth oidc): its `login` comes first
    routes += admin_routes(ctx)  # team/: the admin page and its API
    routes += login_routes(ctx)  # login/: the login page, logout (--auth pam|oidc)
    routes += model_routes(ctx)  # the model pass-through of the team modes
    if base != "/":
        routes.append((base.rstrip("/"), web.RedirectHandler, {"url": base}))
    return web.Application(
        routes,
        websocket_max_message_size=ctx.config.max_message_bytes,
        log_function=partial(log_request, metrics=ctx.metrics),
        xheaders=False,
    )


def make_context(
    config: Config, static_dir: Path = STATIC_DIR, limits: Limits | None = None
) -> Context:
    token = None if config.no_auth else (config.token or secrets.token_urlsafe(24))
    metrics = Metrics()
    audit = AuditLog(config.audit_log)
    ctx = Context(
        config=config,
        manager=SessionManager(config, metrics, audit),
        metrics=metrics,
        token=token,
        static_dir=static_dir,
        model_status=ModelStatusPoller(config.model_server_url, config.model_api_key),
        shares=make_registry(config.flow_window),
        gate=Gate(limits, metrics),
        audit=audit,
        logins=LoginStore(config.login_max_age, config.login_idle, config.max_logins),
        usage=Usage(config.model_usage_file, config.user_daily_tokens),
    )
    if ctx.team:  # sessions reach the model through the pass-through, with their user's key
        ctx.manager.model_env = partial(session_model_env, config, ctx.model_keys)
    return ctx


def make_http_server(ctx: Context, ssl_ctx: ssl.SSLContext | None = None) -> GatedHTTPServer:
    return make_server(make_app(ctx), ctx.gate, ssl_options=ssl_ctx)


def check_static(static_dir: Path) -> None:
    if not (static_dir / VENDOR_SUBDIR / "xterm" / "lib" / "xterm.js").is_file():
        raise StartupError(
            f"xterm.js is missing under {static_dir / VENDOR_SUBDIR}: run `make static` "
            "(or `cd static && npm ci`)"
        )


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.certfile:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load TLS certificate/key: {exc}") from exc
    return ctx


def public_url(ctx: Context) -> str:
    cfg = ctx.config
    host = cfg.host if cfg.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = cfg.public_url or f"{cfg.scheme}://{host}:{cfg.port}{cfg.base_path}"
    # Print the token only when we generated it; a configured one is the operator's secret.
    if ctx.token is not None and cfg.token is None and not ctx.login:
        url += f"?token={ctx.token}"
    return url


async def close_clients(ctx: Context, grace: float = 2.0) -> None:
    for sock in list(ctx.sockets):
        sock.close(protocol.CLOSE_GOING_AWAY, "server shutting down")
    deadline = time.monotonic() + grace
    while ctx.sockets and time.monotonic() < deadline:  # noqa: ASYNC110 - a set, not an event
        await asyncio.sleep(0.01)
    for sock in list(ctx.sockets):  # no close frame back in time: hang up
        if sock.ws is not None:
            sock.ws.abort()


async def serve(config: Config, *, announce: Callable[[str], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT; then close clients with 1001, reap every session, return 0."""
    check_static(STATIC_DIR)
    if config.session_user:
        try:
            session_user.check_can_switch(session_user.lookup(config.session_user))
        except session_user.SessionUserError as exc:
            raise StartupError(str(exc)) from exc
    if config.team and os.geteuid() != 0:
        log.warning(
            "--auth %s without root: sessions run as %s, not as each user's account; only "
            "the routes keep users apart (docs/team.md#what-is-isolated)",
            config.auth,
            config.session_user or "the server's user",
        )
    ssl_ctx = _ssl_context(config)
    try:
        sockets = netutil.bind_sockets(config.port, config.host)
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from exc
    port = sockets[0].getsockname()[1]
    ctx = make_context(dataclasses.replace(config, port=port))
    with token_kept_out_of_logs(ctx.token), ctx.shares.kept_out_of_logs():
        return await _run(ctx, sockets, ssl_ctx, announce or _print)


async def _run(
    ctx: Context,
    sockets: list[socket.socket],
    ssl_ctx: ssl.SSLContext | None,
    announce: Callable[[str], None],
) -> int:
    # A parent may have blocked these (a script's background job ignores SIGINT; a
    # supervisor may block it): the server must still stop on them.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    ctx.manager.become_subreaper()
    server = make_http_server(ctx, ssl_ctx)
    server.add_sockets(sockets)
    ctx.manager.start()
    ctx.model_status.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Start-up's objects (modules, Tornado, the app) live as long as the server: frozen, a
    # full collection with hundreds of sessions no longer walks them with the loop stopped.
    gc.collect()
    gc.freeze()
    announce(public_url(ctx))
    log.info("event loop: %s", type(loop).__module__.split(".")[0])  # uvloop or asyncio
    log.info("garbage collector: %d start-up objects frozen", gc.get_freeze_count())
    if ctx.team:
        log.info("%s", ctx.manager.limits.describe())  # which memory limit applies, and why
    await stop.wait()

    log.info("shutting down")
    server.stop()
    await close_clients(ctx)
    await ctx.model_status.stop()
    await ctx.manager.shutdown()
    await server.close_all_connections()
    ctx.audit.close()
    return 0


def _print(url: str) -> None:
    print(f"mixvllm-terminal: open {url}", flush=True)
    print("mixvllm-terminal: press Ctrl-C to stop", file=sys.stderr, flush=True)
