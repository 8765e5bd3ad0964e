"""Slash commands. Each handler gets the argument text and returns what the REPL does next."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chat_cli import conversation as conv_mod
from chat_cli.errors import ChatError
from chat_cli.render import footer_text
from chat_cli.session import Session


@dataclass(frozen=True)
class Send:
    """Send this text as a user message."""

    text: str


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


SETTABLE = {"temperature": float, "top_p": float, "max_tokens": int, "seed": int}


class Commands:
    def __init__(self, session: Session, out: IO[str], conversations_dir: Path) -> None:
        self.session = session
        self.out = out
        self.conversations_dir = conversations_dir

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self, line: str) -> Outcome:
        name, _, arg = line.strip().partition(" ")
        command = COMMANDS.get(name.lower())
        if command is None:
            matches = [c for c in COMMANDS if c.startswith(name.lower())]
            if len(matches) == 1:
                command = COMMANDS[matches[0]]
            else:
                raise ChatError(f"unknown command {name}; /help lists them")
        return command.handler(self, arg.strip())

    # -- handlers ------------------------------------------------------------------------
    def help(self, arg: str) -> Outcome:
        width = max(len(f"{c.name} {c.args}") for c in COMMANDS.values())
        for c in COMMANDS.values():
            self.say(f"  {f'{c.name} {c.args}':<{width}}  {c.help}")
        self.say(
            "  Enter sends · Alt-Enter or Ctrl-J inserts a newline · Ctrl-C stops an answer "
            "or clears the line · Ctrl-D exits"
        )
        return None

    def clear(self, arg: str) -> Outcome:
        old = self.session.conversation
        self.session.conversation = conv_mod.Conversation(
            system=old.system,
            model=self.session.sampling.model,
            path=conv_mod.new_autosave_path(self.conversations_dir) if old.path else None,
        )
        self.say("Conversation cleared (the old one stays autosaved; /load brings it back).")
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
        served = self.session.client.models()
        if not arg:
            for name in served:
                mark = "*" if name == self.session.sampling.model else " "
                self.say(f" {mark} {name}")
            return None
        if arg not in served:
            raise ChatError(f"model {arg!r} is not served; served: {', '.join(served)}")
        self.session.set_sampling(model=arg)
        self.say(f"Model: {arg}")
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
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ChatError(f"{key} needs {what}, got {value!r}") from None
        self.session.set_sampling(**{key: parsed})
        self.say(f"{key} = {parsed}")
        return None

    def retry(self, arg: str) -> Outcome:
        text = self.session.retry_text()
        if text is None:
            raise ChatError("nothing to retry")
        return Send(text)

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
            self.say(f"[{message.role}]{mark} {message.content}")
        return None

    def save(self, arg: str) -> Outcome:
        conversation = self.session.conversation
        default = Path(f"chat-{time.strftime('%Y%m%d-%H%M%S')}.md")
        path = Path(arg).expanduser() if arg else default
        conversation.save(path)
        self.say(f"Saved to {path}")
        return None

    def load(self, arg: str) -> Outcome:
        if not arg:
            raise ChatError("usage: /load FILE (a .json from /save or the autosave dir)")
        path = Path(arg).expanduser()
        if not path.exists() and (self.conversations_dir / arg).exists():
            path = self.conversations_dir / arg
        loaded = conv_mod.load(path)
        loaded.path = self.session.conversation.path and conv_mod.new_autosave_path(
            self.conversations_dir
        )
        self.session.conversation = loaded
        loaded.autosave()
        self.say(f"Loaded {path} ({len(loaded.messages)} messages).")
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
        payload = base64.b64encode(last.content.encode("utf-8")).decode("ascii")
        # OSC 52: the terminal (xterm.js with the clipboard addon, tmux, iTerm2...) sets the
        # clipboard; works over SSH and through the browser terminal.
        self.out.write(f"\x1b]52;c;{payload}\x07")
        self.say(f"Copied the last answer ({len(last.content)} characters) via OSC 52.")
        return None

    def reasoning(self, arg: str) -> Outcome:
        last = self.session.conversation.last("assistant")
        if last is None or not last.reasoning:
            self.say("(the last answer has no reasoning)")
        else:
            self.say(last.reasoning)
        return None

    def exit(self, arg: str) -> Outcome:
        return Exit()


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("/help", "", "this list", Commands.help),
        Command("/clear", "", "start a new conversation", Commands.clear),
        Command("/system", "[TEXT|-]", "show, set or remove the system prompt", Commands.system),
        Command("/model", "[NAME]", "list served models, or switch", Commands.model),
        Command("/set", "[KEY VALUE]", "temperature, top_p, max_tokens, seed", Commands.set),
        Command("/retry", "", "ask the last question again", Commands.retry),
        Command("/undo", "", "drop the last question and answer", Commands.undo),
        Command("/history", "", "show the conversation", Commands.history),
        Command("/save", "[FILE]", "save as markdown (.md) or JSON", Commands.save),
        Command("/load", "FILE", "load a saved conversation", Commands.load),
        Command("/stats", "", "token counts and speed", Commands.stats),
        Command("/copy", "", "copy the last answer to the clipboard (OSC 52)", Commands.copy),
        Command("/reasoning", "", "show the last answer's reasoning", Commands.reasoning),
        Command("/exit", "", "leave (Ctrl-D works too)", Commands.exit),
    )
}
