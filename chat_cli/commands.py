"""Slash commands. Each handler gets the argument text and returns what the REPL does next."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chat_cli import attach, chats, clipboard, compact
from chat_cli import conversation as conv_mod
from chat_cli.attach import Attachment
from chat_cli.command_help import help_lines
from chat_cli.config import OPTIONS
from chat_cli.errors import ChatError
from chat_cli.render import page
from chat_cli.render.plain import footer_text
from chat_cli.session import Session
from chat_cli.switching import Switcher
from mixvllm_common.options import Kind
from mixvllm_common.terminal_text import visible


@dataclass(frozen=True)
class Send:
    """Send this text as a user message, with these files."""

    text: str
    attachments: tuple[Attachment, ...] = ()


class Exit:
    pass


Outcome = Send | Exit | None
Handler = Callable[["Commands", str], Outcome]


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    help: str
    handler: Handler


SETTABLE: dict[str, Kind] = {
    o.dest: o.kind for o in OPTIONS if o.dest in ("temperature", "top_p", "max_tokens", "seed")
}
ALIASES = {"/quit": "/exit", "/bye": "/exit", "/mcp": "/tools"}
TOOL_CHOICES = "auto|required|none|TOOL"
CHATS_SHOWN = 20
SEARCH_SHOWN = 10


class Commands:
    def __init__(
        self,
        session: Session,
        out: IO[str],
        conversations_dir: Path,
        history_db: Path | None = None,
        switcher: Switcher | None = None,
    ) -> None:
        self.session = session
        self.out = out
        self.conversations_dir = conversations_dir
        self.history_db = history_db
        self.switcher = switcher or Switcher.plain(session)
        self.attached = attach.Pending()  # /file's, sent with the next question

    def say(self, text: str) -> None:
        # Commands show answers, tool results, model and file names: never live controls.
        self.out.write(visible(text) + "\n")
        self.out.flush()

    def run(self, line: str) -> Outcome:
        name, _, arg = line.strip().partition(" ")
        return find_command(name).handler(self, arg.strip())

    # -- handlers ------------------------------------------------------------------------
    def help(self, arg: str) -> Outcome:
        entries = [(f"{c.name} {c.args}".rstrip(), c.help) for c in COMMANDS.values()]
        for line in help_lines(entries, self._columns()):
            self.say(line)
        return None

    def _columns(self) -> int | None:
        """The terminal's width, if `out` is one (not in pipe mode or a test's buffer)."""
        try:
            return os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError):  # not a terminal, or no descriptor at all
            return None

    def clear(self, arg: str) -> Outcome:
        old = self.session.conversation
        self.session.conversation = conv_mod.Conversation(
            system=old.system,
            model=self.session.sampling.model,
            path=chats.new_autosave_path(self.conversations_dir) if old.path else None,
        )
        self.say("Conversation cleared (the old one stays saved; /chats lists it).")
        return None

    def system(self, arg: str) -> Outcome:
        conversation = self.session.conversation
        if not arg:
            self.say(f"System prompt: {conversation.system or '(none)'}")
            self.say("  /system TEXT sets it, /system - removes it")
            return None
        conversation.system = None if arg == "-" else arg
        conversation.autosave()
        self.say("System prompt removed." if arg == "-" else "System prompt set.")
        return None

    def model(self, arg: str) -> Outcome:
        self.switcher.model(arg, self.say)
        return None

    def role(self, arg: str) -> Outcome:
        self.switcher.role(arg, self.say)
        return None

    def roles(self, arg: str) -> Outcome:
        self.switcher.list_roles(self.say)
        return None

    def server(self, arg: str) -> Outcome:
        self.switcher.server(arg, self.say)
        return None

    def set(self, arg: str) -> Outcome:
        key, _, value = arg.partition(" ")
        sampling = self.session.sampling
        if not key:
            for name in SETTABLE:
                current = getattr(sampling, name)
                self.say(f"  {name} = {'server default' if current is None else current}")
            return None
        kind = SETTABLE.get(key)
        if kind is None:
            raise ChatError(f"cannot set {key!r}; one of: {', '.join(SETTABLE)}")
        value = value.strip()
        if value in ("", "default", "-"):
            self.session.set_sampling(**{key: None})
            self.say(f"{key} = server default")
            return None
        try:
            parsed = kind(value)
        except ValueError as err:
            raise ChatError(f"{key} {err}, got {value!r}") from None
        self.session.set_sampling(**{key: parsed})
        self.say(f"{key} = {parsed}")
        return None

    def retry(self, arg: str) -> Outcome:
        question = self.session.retry()
        if question is None:
            raise ChatError("nothing to retry")
        return Send(question.content, question.attachments)

    def file(self, arg: str) -> Outcome:
        pending = self.attached
        if arg == "-":
            self.say(f"Dropped the attached files ({pending.drop()}).")
            return None
        for attached in pending.add(arg) if arg else pending.files:
            self.say(f"{'attached: ' if arg else '  '}{attached.label()}")
        self.say(
            "  sent with the next question · /file lists them · /file - drops them"
            if pending.files
            else "  /file PATH... attaches files (globs too) to the next question"
        )
        return None

    def download(self, arg: str) -> Outcome:
        from chat_cli import drops  # noqa: PLC0415 (only for /download)

        to_page = page.enabled(os.environ, self._columns() is not None)
        line, osc = drops.offer(arg, os.environ, to_page)
        self.out.write(osc)  # chat's own sequence: the page makes it a link
        self.say(line)
        return None

    def undo(self, arg: str) -> Outcome:
        dropped = self.session.conversation.undo()
        self.session.conversation.autosave()
        self.say(
            f"Removed the last exchange ({dropped} messages)." if dropped else "Nothing to undo."
        )
        return None

    def history(self, arg: str) -> Outcome:
        conversation = self.session.conversation
        if conversation.system:
            self.say(f"[system] {conversation.system}")
        if not conversation.messages:
            self.say("(no messages yet)")
        for message in conversation.messages:
            mark = f" [{message.incomplete}]" if message.incomplete else ""
            role = f"tool {message.name}" if message.role == "tool" else message.role
            calls = [c["function"]["name"] for c in message.tool_calls or ()]
            called = f" [calls {', '.join(calls)}]" if calls else ""
            files = ", ".join(a.label() for a in message.attachments)
            attached = f" [attached {files}]" if files else ""
            self.say(f"[{role}]{mark}{called}{attached} {message.content}")
        return None

    def save(self, arg: str) -> Outcome:
        conversation = self.session.conversation
        if arg and chats.is_name(arg):
            return self._name(arg)
        default = Path(f"chat-{time.strftime('%Y%m%d-%H%M%S')}.md")
        path = Path(arg).expanduser() if arg else default
        conversation.save(path)
        self.say(f"Saved to {path}")
        return None

    def _name(self, name: str) -> Outcome:
        """Save under a name in the conversation folder and keep autosaving there."""
        conversation = self.session.conversation
        path = chats.named_path(self.conversations_dir, name)
        if path.exists() and path != conversation.path:
            raise ChatError(f"a conversation named {name!r} exists; /load {name} opens it")
        conversation.save(path, make_dirs=True)
        old, conversation.path = conversation.path, path
        if old is not None and old != path and not chats.is_named(old):
            old.unlink(missing_ok=True)  # the same chat, now under its name
        self.say(f"Saved as {name} ({path}); autosave continues there. chat --resume {name}")
        return None

    def load(self, arg: str) -> Outcome:
        if not arg:
            raise ChatError("usage: /load NAME (/chats lists them) or /load FILE.json")
        named = chats.find(self.conversations_dir, arg) if "/" not in arg else None
        if named is None and chats.is_name(arg) and self.history_db is not None:
            from chat_cli.history.recorder import restore  # noqa: PLC0415 (sqlite3)

            named = restore(self.history_db, self.conversations_dir, arg)
        path = named or Path(arg).expanduser()
        if named is None and chats.is_name(arg) and not path.exists():
            raise ChatError(f"no saved conversation named {arg!r}; /chats lists them")
        loaded = conv_mod.load(path)
        if self.session.conversation.path is not None:
            # A chat from the folder goes on in its file; one from elsewhere is copied in.
            loaded.path = named or chats.new_autosave_path(self.conversations_dir)
        self.session.conversation = loaded
        loaded.autosave()
        self.say(f"Loaded {named.stem if named else path} ({len(loaded.messages)} messages).")
        return None

    def search(self, arg: str) -> Outcome:
        if not arg:
            raise ChatError("usage: /search TEXT (every word, in questions and answers)")
        if self.history_db is None:
            raise ChatError("no history: it is off (--no-history)")
        from chat_cli.history import logs  # noqa: PLC0415 (sqlite3: only when searching)

        hits = logs.search(self.history_db, self.conversations_dir, arg, SEARCH_SHOWN)
        # Unstyled: say() shows every control character (the marks are `[...]` here).
        for line in logs.lines(hits, self._columns() or 100, styled=False, resume="/load"):
            self.say(line)
        self.say("  /load ID continues one" if hits else "(nothing found)")
        return None

    def list_chats(self, arg: str) -> Outcome:
        saved = chats.newest_first(self.conversations_dir)
        if not saved:
            self.say(f"(no saved conversations in {self.conversations_dir})")
            return None
        current = self.session.conversation.path
        for path in saved[:CHATS_SHOWN]:
            self.say(f" {'*' if path == current else ' '} {chats.summary(path)}")
        more = f"{len(saved) - CHATS_SHOWN} older not shown · " if len(saved) > CHATS_SHOWN else ""
        self.say(f"  {more}/load NAME opens one · folder: {self.conversations_dir}")
        return None

    def stats(self, arg: str) -> Outcome:
        s = self.session.stats
        approx = "~" if s.estimated else ""
        rate = f"{s.completion_tokens / s.generation_s:.1f} tok/s" if s.generation_s else "n/a"
        self.say(
            f"requests {s.requests} · errors {s.errors} · {approx}{s.prompt_tokens} prompt + "
            f"{approx}{s.completion_tokens} completion tokens · average {rate}"
        )
        if self.session.last_answer is not None:
            self.say(f"last answer: {footer_text(self.session.last_answer)}")
        path = self.session.conversation.path
        self.say(f"autosave: {path if path else 'off'}")
        return None

    def copy(self, arg: str) -> Outcome:
        last = self.session.conversation.last("assistant")
        if last is None or not last.content:
            raise ChatError("no answer to copy yet")
        text, what = clipboard.pick(last.content, arg.lower())
        self.say(clipboard.copy(text, what, self.out, os.environ))
        return None

    def reasoning(self, arg: str) -> Outcome:
        last = self.session.conversation.last("assistant")
        if last is None or not last.reasoning:
            self.say("(the last answer has no reasoning)")
        else:
            self.say(last.reasoning)
        return None

    def tools(self, arg: str) -> Outcome:
        toolbox = self.session.tools
        if toolbox is None and self.switcher.toolbox is not None:
            raise ChatError(f"tools are off for role {self.session.role}; /role - turns them on")
        if toolbox is None:
            raise ChatError(
                "no tools configured: add an MCP server with [mcp.servers.NAME] in chat.toml "
                "or --mcp NAME=COMMAND (see docs/chat.md#tools)"
            )
        verb, _, rest = arg.partition(" ")
        try:
            if verb in ("on", "off") and rest.strip():
                self.say(toolbox.toggle(rest.strip(), verb == "on").capitalize() + ".")
            elif verb == "choice" and rest.strip():
                toolbox.set_choice(rest.strip())
                self.say(f"tool_choice: {toolbox.choice}")
            elif not verb:
                for line in toolbox.lines():
                    self.say(line)
            else:
                raise ChatError(f"usage: /tools [on|off NAME] [choice {TOOL_CHOICES}]")
        except ValueError as err:
            raise ChatError(str(err)) from None
        return None

    def last_tool(self, arg: str) -> Outcome:
        toolbox = self.session.tools
        if toolbox is None or toolbox.last_result is None:
            raise ChatError("no tool result yet")
        self.say(toolbox.last_result)
        return None

    def exit(self, arg: str) -> Outcome:
        return Exit()


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("/help", "", "this list", Commands.help),
        Command("/clear", "", "start a new conversation", Commands.clear),
        Command("/system", "[TEXT|-]", "show, set or remove the system prompt", Commands.system),
        Command("/model", "[NAME]", "list the models of every server, or switch", Commands.model),
        Command("/role", "[NAME|-]", "use a role, or drop it", Commands.role),
        Command("/roles", "", "list the roles", Commands.roles),
        Command("/server", "[NAME]", "list the servers, or switch", Commands.server),
        Command("/set", "[KEY VALUE]", "temperature, top_p, max_tokens, seed", Commands.set),
        Command("/retry", "", "ask the last question again", Commands.retry),
        Command(
            "/file", "[PATH...|-]", "attach files or images to the next question", Commands.file
        ),
        Command("/download", "PATH", "a download link on the page (browser)", Commands.download),
        Command("/undo", "", "drop the last question and answer", Commands.undo),
        Command("/trim", "[N]", "drop the oldest exchanges until it fits", compact.trim),
        Command("/compact", "[N]", "summarise all but the last N exchanges", compact.compact),
        Command("/history", "", "show the conversation", Commands.history),
        Command("/save", "[NAME|FILE]", "name this chat, or export it (.md, .json)", Commands.save),
        Command("/load", "NAME|FILE", "open a saved conversation", Commands.load),
        Command("/chats", "", "list saved conversations, newest first", Commands.list_chats),
        Command("/search", "TEXT", "search the history of all chats", Commands.search),
        Command("/stats", "", "token counts and speed", Commands.stats),
        Command(
            "/copy", "[code|N]", "copy the last answer, or its last / Nth code block", Commands.copy
        ),
        Command("/reasoning", "", "show the last answer's reasoning", Commands.reasoning),
        Command(
            "/tools",
            "[on|off NAME] [choice C]",
            "MCP servers and tools; turn one on or off; force a call (also /mcp)",
            Commands.tools,
        ),
        Command("/last-tool", "", "show the last tool result whole", Commands.last_tool),
        Command("/exit", "", "leave (also /quit, /bye, Ctrl-D)", Commands.exit),
    )
}


def find_command(name: str) -> Command:
    """The command `name` names: exactly, as an alias, or as the prefix of only one."""
    name = ALIASES.get(name.lower(), name.lower())
    if name in COMMANDS:
        return COMMANDS[name]
    matches = sorted({ALIASES.get(c, c) for c in [*COMMANDS, *ALIASES] if c.startswith(name)})
    if len(matches) == 1:
        return COMMANDS[matches[0]]
    if matches:
        raise ChatError(f"{name} could be {', '.join(matches)}")
    import difflib  # noqa: PLC0415 (only for a mistyped command)

    close = difflib.get_close_matches(name, [*COMMANDS, *ALIASES], n=1, cutoff=0.75)
    if close:
        raise ChatError(f"unknown command {name}; did you mean {close[0]}? (/help lists them)")
    raise ChatError(f"unknown command {name}; /help lists them")
