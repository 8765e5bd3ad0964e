"""The interactive loop: prompt-toolkit input, slash commands, one exchange per line."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys

from chat_cli import attach, chats, export
from chat_cli.attach import Attachment
from chat_cli.commands import COMMANDS, SETTABLE, Commands, Exit, Send
from chat_cli.errors import ChatError
from chat_cli.render import page
from chat_cli.render.markdown import make_renderer
from chat_cli.render.plain import Renderer
from chat_cli.session import Session
from chat_cli.switching import Switcher
from mixvllm_common.terminal_text import visible

if TYPE_CHECKING:
    from rich.console import Console

PROMPT = "> "
# A longer paste shows as a one-line placeholder: prompt-toolkit lays out every wrapped row
# of its input on each keystroke, seconds for a pasted megabyte.
PASTE_SHOWN_MAX = 50_000
BARE_EXITS = ("exit", "quit", "exit()", "quit()", ":q")


class Pastes:
    """Pastes too long to show: a placeholder in the input, and the text it stands for."""

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}

    def hold(self, text: str) -> str:
        lines = len(text.splitlines())
        key = f"[pasted text #{len(self._texts) + 1}: {len(text):,} characters, {lines:,} lines]"
        self._texts[key] = text
        return key

    def expand(self, line: str) -> str:
        """`line` as typed, with each placeholder in it replaced by its paste."""
        for key, text in self._texts.items():
            line = line.replace(key, text)
        return line


class _FileHistoryWithoutPastes(FileHistory):
    """A placeholder means nothing in a later session, and its paste is too big to keep: a line
    holding one is recalled in this session only."""

    def store_string(self, string: str) -> None:
        if "[pasted text #" not in string:
            super().store_string(string)


FIXED_CHOICES = {
    "/copy": ["code"],
    "/tools": ["on ", "off ", "choice "],
    "/mcp": ["on ", "off ", "choice "],
}


class SlashCompleter(Completer):
    def __init__(
        self, session: Session, conversations_dir: Path, switcher: Switcher | None = None
    ) -> None:
        self.session = session
        self.conversations_dir = conversations_dir
        self.switcher = switcher
        self._models: tuple[str, list[str]] | None = None  # the server's URL, its models

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/") or "\n" in text:
            return
        name, space, arg = text.partition(" ")
        if not space:
            for command in COMMANDS.values():
                if command.name.startswith(name.lower()):
                    yield Completion(
                        command.name, start_position=-len(name), display_meta=command.help
                    )
            return
        for choice in self._choices(name.lower()):
            if choice.startswith(arg) and choice != arg:
                yield Completion(choice, start_position=-len(arg))

    def _choices(self, name: str) -> list[str]:
        if name == "/set":
            return [f"{key} " for key in SETTABLE]
        if name == "/model":
            url = self.session.client.base_url  # /server may have changed it
            if self._models is None or self._models[0] != url:
                try:
                    self._models = (url, self.session.client.models())
                except ChatError:
                    return []
            return self._models[1]
        if name in ("/role", "/server") and self.switcher is not None:
            return sorted(self.switcher.roles if name == "/role" else self.switcher.servers)
        if name == "/load":
            return [p.stem for p in chats.newest_first(self.conversations_dir)]
        return FIXED_CHOICES.get(name, [])


def _input() -> Input | None:
    """The terminal's input, read 64 KiB at a time (None: prompt-toolkit's default).

    prompt-toolkit reads 1 KiB at a time: a pasted megabyte is a thousand trips through its
    event loop, each appending to the paste so far and searching all of it for its end.
    """
    if sys.platform == "win32" or not sys.stdin.isatty():
        return None
    from prompt_toolkit.input.posix_utils import PosixStdinReader  # noqa: PLC0415
    from prompt_toolkit.input.vt100 import Vt100Input  # noqa: PLC0415

    class Reader(PosixStdinReader):
        def read(self, count: int = 1 << 16) -> str:
            return super().read(max(count, 1 << 16))

    terminal = Vt100Input(sys.stdin)
    terminal.stdin_reader = Reader(sys.stdin.fileno(), encoding=sys.stdin.encoding)
    return terminal


def _key_bindings(pastes: Pastes) -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add(Keys.BracketedPaste)
    def _paste(event: KeyPressEvent) -> None:
        # As prompt-toolkit's own: some terminals paste \r\n or \r line ends.
        data = event.data.replace("\r\n", "\n").replace("\r", "\n")
        event.current_buffer.insert_text(pastes.hold(data) if len(data) > PASTE_SHOWN_MAX else data)

    @bindings.add("enter")
    def _accept(event: KeyPressEvent) -> None:
        event.current_buffer.validate_and_handle()

    @bindings.add("escape", "enter")
    @bindings.add("c-j")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


def _warm_up(session: Session) -> None:
    """Import the markdown renderer while the user types."""

    def work() -> None:
        # A failure shows up again, clearly, on first use.
        with contextlib.suppress(Exception):
            import rich.markdown  # noqa: F401, PLC0415

    threading.Thread(target=work, name="chat-warm-up", daemon=True).start()


class Repl:
    def __init__(
        self,
        session: Session,
        console: Console,
        *,
        history_file: Path | None,
        conversations_dir: Path,
        history_db: Path | None = None,
        attached: tuple[Attachment, ...] = (),
        markdown: bool,
        show_reasoning: bool,
        debug: bool,
        switcher: Switcher | None = None,
    ) -> None:
        self.session = session
        self.console = console
        self.markdown = markdown
        self.show_reasoning = show_reasoning
        self.debug = debug
        self.commands = Commands(session, console.file, conversations_dir, history_db, switcher)
        self.commands.attached = attach.Pending(attached)  # chat -a: for the first question
        self.page_marks = page.enabled(os.environ, console.is_terminal)
        self.pastes = Pastes()
        history: History = InMemoryHistory()
        if history_file is not None:
            try:
                history_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.close(os.open(history_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
                history = _FileHistoryWithoutPastes(str(history_file))
            except OSError as err:
                self.error(f"input history disabled: cannot create {history_file} ({err})")
        # Cursor-position requests answered late (a browser terminal over a slow link) make
        # prompt-toolkit print a warning mid-screen; it works well without them.
        os.environ.setdefault("PROMPT_TOOLKIT_NO_CPR", "1")
        self.prompt: PromptSession[str] = PromptSession(
            history=history,
            multiline=True,
            key_bindings=_key_bindings(self.pastes),
            completer=SlashCompleter(session, conversations_dir, self.commands.switcher),
            complete_while_typing=True,
            prompt_continuation="· ",
            enable_open_in_editor=True,
            input=_input(),
        )

    def error(self, text: str) -> None:
        self.console.print(f"✗ {visible(text)}", style="red", markup=False, highlight=False)

    def run(self) -> int:
        _warm_up(self.session)
        export.export(self.session.conversation, os.environ)  # a resumed chat: exportable at once
        watcher = None
        if self.page_marks:  # the browser terminal: files dropped on the page
            from chat_cli import drops  # noqa: PLC0415 (start-up elsewhere: not needed)

            where = drops.folder(os.environ)
            watcher = drops.Watcher(where, self._drop_shown).start() if where else None
        try:
            return self._loop()
        finally:
            if watcher is not None:
                watcher.stop()

    def _drop_shown(self, line: str) -> bool:
        """Say `line` above the prompt (the watcher's thread); False when no prompt waits."""
        app = self.prompt.app
        if not app.is_running or app.loop is None:
            return False
        try:
            app.loop.call_soon_threadsafe(lambda: run_in_terminal(lambda: self.commands.say(line)))
        except RuntimeError:  # the prompt ended just now, and its loop with it
            return False
        return True

    def _loop(self) -> int:
        while True:
            try:
                text = self.pastes.expand(self.prompt.prompt(PROMPT))
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line
            except EOFError:
                return 0
            if text.strip() and not self.handle(text):
                return 0

    def handle(self, text: str) -> bool:
        """Run one line: a slash command or a question. False: the line ends the session."""
        try:
            if text.strip().lower() in BARE_EXITS:
                text = "/exit"  # what it means alone on a line; nobody asks a model that
            if text.startswith("/"):
                outcome = self.commands.run(text)
                if isinstance(outcome, Exit):
                    return False
                if not isinstance(outcome, Send):
                    return True
                text, attachments = outcome.text, outcome.attachments
            else:
                attachments = self.commands.attached.take()
            self.ask(text, attachments)
        except ChatError as err:
            self.error(str(err))
        except KeyboardInterrupt:
            self.console.print("[cancelled]", style="yellow", markup=False)
        except Exception as err:  # a bug must not end the session and lose the chat
            if self.debug:
                sys.stderr.write(visible(traceback.format_exc()))  # it quotes the error's text
            self.error(f"internal error: {type(err).__name__}: {err} (--debug shows more)")
        finally:
            conversation = self.session.conversation
            export.export(conversation, os.environ)
            if conversation.autosave_failure:
                self.error(conversation.autosave_failure)
                conversation.autosave_failure = None
        return True

    def ask(self, text: str, attachments: tuple[Attachment, ...] = ()) -> None:
        if attachments:
            files = ", ".join(a.label() for a in attachments)
            self.console.print(f"with {visible(files)}", style="dim", markup=False)
        self.session.ask(text, self.renderer(), self.renderer, attachments)

    def renderer(self) -> Renderer:
        return make_renderer(
            self.console,
            self.console.file,
            markdown=self.markdown,
            show_reasoning=self.show_reasoning,
            footer=True,
            page_marks=self.page_marks,
            context_limit=self.session.window.limit if self.session.window else None,
        )
