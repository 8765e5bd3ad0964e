"""Roles: named sets of a system prompt, a question template, a model, sampling settings and
tools on or off, from `[roles.NAME]` in chat.toml next to a few built-ins it may override.

A role's `prompt` wraps a one-shot question: `{input}` in it stands for the question and the
piped text (`cat diff | chat -r review`); a prompt without `{input}` gets them after a blank
line. The input goes in literally: a placeholder in it is text, never expanded again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from chat_cli.errors import ConfigError

INPUT = "{input}"
SAMPLING = ("temperature", "top_p", "max_tokens", "seed")


@dataclass(frozen=True)
class Role:
    name: str
    description: str = ""
    system: str | None = None
    prompt: str | None = None  # a one-shot question's template
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    tools: bool | None = None  # None: as configured
    builtin: bool = False

    def question(self, text: str) -> str:
        """The user message for a one-shot `text` (the question and the piped input)."""
        if not self.prompt:
            return text
        if INPUT in self.prompt:
            return text.join(self.prompt.split(INPUT))
        return f"{self.prompt}\n\n{text}" if text.strip() else self.prompt


BUILTINS: dict[str, Role] = {
    r.name: r
    for r in (
        Role(
            "shell",
            "a shell command for a task; it never runs anything itself",
            system=(
                "You help with the Unix shell. Answer a request with the command that does it, "
                "in one ```sh code block, then at most three short lines on what is not "
                "obvious. Prefer standard tools. Say so first if the command deletes or "
                "overwrites anything. You cannot run commands and never claim to have run one: "
                "the user runs it."
            ),
            temperature=0.2,
            tools=False,
            builtin=True,
        ),
        Role(
            "review",
            "review code or a diff: real problems first",
            system=(
                "You are a careful senior code reviewer. List real problems first, most "
                "serious first (bugs, security holes, data loss, races, missing error "
                "handling), each with where it is and a concrete fix; then smaller remarks. "
                "Do not praise, do not restate the code. If it looks right, say so in one line."
            ),
            prompt="Review this:\n\n{input}",
            temperature=0.2,
            builtin=True,
        ),
        Role(
            "explain",
            "explain code, an error message or a log, step by step",
            system=(
                "You explain code, error messages and logs to a working engineer: what it "
                "does or means, why, and what to do next. Be concrete and brief."
            ),
            prompt="Explain this:\n\n{input}",
            builtin=True,
        ),
    )
}

_TEXT_KEYS = ("description", "system", "prompt", "model")


def parse_table(
    table: object, source: str, kinds: Mapping[str, Callable[[str], Any]]
) -> dict[str, Role]:
    """`[roles.NAME]` tables into roles; `kinds` parse the sampling settings as the options
    do. Raises ValueError with one line naming the key."""
    if not isinstance(table, dict):
        raise ValueError(f"{source}: roles must be a table of [roles.NAME] tables")
    known = [f.name for f in fields(Role) if f.name not in ("name", "builtin")]
    roles: dict[str, Role] = {}
    for name, body in table.items():
        where = f"{source}: [roles.{name}]"
        if not isinstance(body, dict):
            raise ValueError(f"{where} must be a table")
        unknown = sorted(set(body) - set(known))
        if unknown:
            listed = ", ".join(unknown)
            raise ValueError(f"{where}: unknown keys {listed}; known: {', '.join(known)}")
        values: dict[str, Any] = {}
        for key, raw in body.items():
            values[key] = _value(key, raw, where, kinds)
        roles[name] = Role(name, **values)
    return roles


def _value(key: str, raw: object, where: str, kinds: Mapping[str, Callable[[str], Any]]) -> Any:
    if key in _TEXT_KEYS:
        if not isinstance(raw, str):
            raise ValueError(f"{where}: {key} must be a string")
        return raw
    if key == "tools":
        if not isinstance(raw, bool):
            raise ValueError(f"{where}: tools must be true or false")
        return raw
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"{where}: {key} must be a number")
    try:
        return kinds[key](str(raw))
    except ValueError as err:
        raise ValueError(f"{where}: {key} {err}, got {raw!r}") from None


def merged(configured: Mapping[str, Role]) -> dict[str, Role]:
    """The built-ins, each replaced by a configured role of its name, then the rest."""
    return {**BUILTINS, **configured}


def find(roles: Mapping[str, Role], name: str, where: str = "") -> Role:
    """The role `name`; ConfigError with one line listing the known ones (`where`: what
    named it)."""
    role = roles.get(name)
    if role is None:
        named = f" ({where})" if where else ""
        raise ConfigError(f"unknown role {name!r}{named}; known roles: {', '.join(sorted(roles))}")
    return role


def settings(role: Role | None, base: Mapping[str, Any], given: frozenset[str]) -> dict[str, Any]:
    """`base` (system, model and the sampling settings as configured) with the role's own
    settings over it, except those in `given` (flags on the command line win)."""
    out = dict(base)
    if role is None:
        return out
    for key in ("system", "model", *SAMPLING):
        own = getattr(role, key)
        if own is not None and key not in given:
            out[key] = own
    return out
