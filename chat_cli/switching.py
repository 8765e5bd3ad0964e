"""/role, /roles, /server and /model: a REPL session's role and server, changed in place.

After start-up, the one writer of `session.role`, `session.server` and `session.client`.
Models are listed across every configured server at once, each asked in its own thread with
a short timeout: a server that is down is marked so, the others are still listed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from chat_cli import roles as roles_mod
from chat_cli import servers as servers_mod
from chat_cli.api.client import ChatClient, Sampling, fetch_models
from chat_cli.errors import ChatError
from chat_cli.roles import Role
from chat_cli.servers import Server
from chat_cli.session import Session

if TYPE_CHECKING:
    from chat_cli.tools.toolbox import Toolbox

MODELS_TIMEOUT_S = 5.0
Say = Callable[[str], None]


class Switcher:
    def __init__(
        self,
        session: Session,
        *,
        roles: Mapping[str, Role],
        servers: Mapping[str, Server],
        base: Mapping[str, Any],
        toolbox: Toolbox | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`base`: system, model and sampling settings as configured, without a role;
        `servers`: every server by name, `default` first; the session's is `session.server`."""
        self.session = session
        self.roles = roles
        self.servers = servers
        self.base = dict(base)
        self.toolbox = toolbox
        self.env = os.environ if env is None else env
        self._keys: dict[str, str | None] = {}
        if session.server in servers:  # the key start-up used: not read again
            self._keys[session.server] = session.client.api_key

    @classmethod
    def plain(cls, session: Session) -> Switcher:
        """No configuration: the built-in roles and the session's server as `default`."""
        client = session.client
        server = Server(session.server, client.base_url, client.api_key)
        s = session.sampling
        base = {"system": session.conversation.system, "model": s.model} | {
            k: getattr(s, k) for k in roles_mod.SAMPLING
        }
        return cls(session, roles=roles_mod.BUILTINS, servers={server.name: server}, base=base)

    # -- roles -----------------------------------------------------------------------------
    def list_roles(self, say: Say) -> None:
        for role in sorted(self.roles.values(), key=lambda r: r.name):
            mark = "*" if role.name == self.session.role else " "
            where = "built-in" if role.builtin else "chat.toml"
            say(f" {mark} {role.name:<12} {role.description or '(no description)'} ({where})")
        say("  /role NAME uses one, /role - none; [roles.NAME] in chat.toml adds or overrides")

    def role(self, arg: str, say: Say) -> None:
        if not arg:
            current = self.session.role
            say(f"Role: {current or '(none)'} · /roles lists them, /role - drops it")
            return
        role = None if arg == "-" else roles_mod.find(self.roles, arg)
        values = roles_mod.settings(role, self.base, frozenset())
        # The model stays unless the role names one: switching models is the user's call.
        model = role.model if role is not None and role.model else self.session.sampling.model
        if role is not None and role.model and role.model != self.session.sampling.model:
            served = self.session.client.models()
            if role.model not in served:
                raise ChatError(
                    f"role {role.name!r} wants model {role.model!r}, not served by "
                    f"{self.session.server}; served: {', '.join(served)}"
                )
        sampling = Sampling(model, *(values[k] for k in roles_mod.SAMPLING))
        self.session.set_sampling(**vars(sampling))
        conversation = self.session.conversation
        conversation.system = values["system"]
        conversation.autosave()
        self.session.role = role.name if role is not None else None
        self._tools(role)
        if role is None:
            say("Role dropped: the configured system prompt and settings are back.")
        else:
            say(f"Role: {role.name} · model {model}{_settings(sampling)}")

    def _tools(self, role: Role | None) -> None:
        if self.toolbox is None:
            return
        on = role is None or role.tools is not False
        self.session.tools = self.toolbox if on else None

    # -- servers ---------------------------------------------------------------------------
    def list_servers(self, say: Say) -> None:
        for server in self.servers.values():
            mark = "*" if server.name == self.session.server else " "
            say(f" {mark} {server.name:<12} {server.url}")
        say("  /server NAME switches; /model lists the models of all of them")

    def server(self, arg: str, say: Say) -> None:
        if not arg:
            self.list_servers(say)
            return
        server = servers_mod.find(self.servers, arg)
        key = self._key(server)
        served = fetch_models(server.url, key, MODELS_TIMEOUT_S)
        if not served:
            raise ChatError(f"server {server.name!r} serves no models (/v1/models is empty)")
        current = self.session.sampling.model
        role = self.roles.get(self.session.role or "")
        wanted = role.model if role is not None and role.model else self.base.get("model")
        model = next((m for m in (current, wanted) if m in served), served[0])
        self._use(server, key, model)
        say(f"Server: {server.name} ({server.url}) · model {model}")

    def _use(self, server: Server, key: str | None, model: str) -> None:
        old = self.session.client
        self.session.client = ChatClient(server.url, key, old.stall_timeout, old.deadline)
        old.close()
        self.session.server = server.name
        self.session.set_sampling(model=model)

    def _key(self, server: Server) -> str | None:
        if server.name not in self._keys:
            self._keys[server.name] = servers_mod.read_key(server, self.env)
        return self._keys[server.name]

    def _models(self, server: Server) -> list[str] | str:
        """The server's models, or why not (one line)."""
        try:
            return fetch_models(server.url, self._key(server), MODELS_TIMEOUT_S)
        except ChatError as err:
            return err.message

    # -- models ----------------------------------------------------------------------------
    def model(self, arg: str, say: Say) -> None:
        if len(self.servers) == 1 or (arg and arg in self.session.client.models()):
            self._one_server_model(arg, say)  # the current server's: no other is asked
            return
        names = list(self.servers)
        with ThreadPoolExecutor(len(names), thread_name_prefix="chat-models") as pool:
            found = dict(zip(names, pool.map(self._models, self.servers.values()), strict=True))
        if arg:
            on = [n for n, m in found.items() if isinstance(m, list) and arg in m]
            if not on:
                raise ChatError(f"model {arg!r} is not served by any server; /model lists them")
            self._use(self.servers[on[0]], self._key(self.servers[on[0]]), arg)
            say(f"Model: {arg} · server {on[0]}")
            return
        for name, models in found.items():
            here = name == self.session.server
            say(f"  {name} ({self.servers[name].url}){' · current' if here else ''}")
            if isinstance(models, str):
                say(f"     unreachable: {models}")
                continue
            for model in models:
                mark = "*" if here and model == self.session.sampling.model else " "
                say(f"   {mark} {model}")

    def _one_server_model(self, arg: str, say: Say) -> None:
        served = self.session.client.models()
        if not arg:
            for name in served:
                mark = "*" if name == self.session.sampling.model else " "
                say(f" {mark} {name}")
            return
        if arg not in served:
            raise ChatError(f"model {arg!r} is not served; served: {', '.join(served)}")
        self.session.set_sampling(model=arg)
        say(f"Model: {arg}")


def _settings(sampling: Sampling) -> str:
    values = {k: getattr(sampling, k) for k in roles_mod.SAMPLING}
    shown = [f"{k} {v}" for k, v in values.items() if v is not None]
    return f" · {', '.join(shown)}" if shown else ""
