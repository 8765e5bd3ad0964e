"""What `chat` does once its configuration is read: connect, then one question or the REPL.

chat_cli.__main__ reads the configuration first and imports this only then: `chat --help` and
a bad flag need none of it."""

from __future__ import annotations

import io
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from chat_cli import attach, chats
from chat_cli import conversation as conv_mod
from chat_cli.api.answer import Answer, has_surrogates
from chat_cli.api.client import ChatClient, Sampling
from chat_cli.attach import Attachment
from chat_cli.config import Config
from chat_cli.connecting import connect, server_key
from chat_cli.context_window import ContextWindow
from chat_cli.errors import (
    EXIT_INTERRUPTED,
    ChatError,
    ConfigError,
    ModelNotFound,
)
from chat_cli.render import page
from chat_cli.render.markdown import make_renderer
from chat_cli.render.plain import PlainRenderer, Renderer
from chat_cli.session import INTERRUPTED, Session
from chat_cli.tty import typeahead_quiet
from mixvllm_common.terminal_text import json_safe, visible

if TYPE_CHECKING:
    from rich.console import Console

    from chat_cli.history.recorder import Recorder
    from chat_cli.switching import Switcher
    from chat_cli.tools.loop import ToolView
    from chat_cli.tools.mcp_client import McpHub
    from chat_cli.tools.toolbox import Toolbox


def _read_stdin() -> str:
    # The bytes, decoded strictly: the text layer may smuggle bad bytes in as surrogates.
    stdin = sys.stdin
    try:
        buffer = getattr(stdin, "buffer", None)
        text = buffer.read().decode("utf-8") if buffer is not None else stdin.read()
    except UnicodeDecodeError as err:
        raise ChatError("stdin is not UTF-8 text") from err
    if has_surrogates(text):
        raise ChatError("stdin is not UTF-8 text")
    return text


def _make_console(out: TextIO) -> Console:
    from rich.console import Console  # noqa: PLC0415 (slow import)

    return Console(file=out, highlight=False, soft_wrap=False)


def run(config: Config) -> int:
    out, err = sys.stdout, sys.stderr
    if isinstance(config.resume, str):
        _named(config, config.resume)  # a wrong name fails first: before "nothing to ask"
    # A file that cannot go fails before chat connects.
    attached = tuple(attach.load(config.attach)) if config.attach else ()
    interactive = config.prompt is None and sys.stdin.isatty()
    if interactive and not out.isatty():
        raise ChatError("nothing to ask: give a question (the interactive mode needs a terminal)")
    question = config.prompt or ""
    if has_surrogates(question):
        raise ChatError("the question on the command line is not UTF-8 text")
    if not sys.stdin.isatty():
        piped = _read_stdin()
        if piped.strip():
            question = f"{question}\n\n{piped}" if question else piped
        if not question.strip() and not attached:
            raise ChatError("nothing to ask: give a question, or pipe text into chat")
    if not interactive and config.role is not None:
        question = config.role.question(question)  # the input is data: never a placeholder

    # Keys typed while chat connects (or waits for a loading model) wait for the prompt.
    with typeahead_quiet(sys.stdin) if interactive else nullcontext():
        key = server_key(config)
        base_url, models = connect(config, err, key)
        model = config.model or models[0]
        if model not in models:
            raise ModelNotFound(model, models)
        client = ChatClient(base_url, key, config.timeout, config.deadline)
        try:
            return _converse(
                config, client, base_url, model, question=question, interactive=interactive,
                attached=attached,
            )  # fmt: skip
        finally:
            client.close()


def _converse(
    config: Config,
    client: ChatClient,
    base_url: str,
    model: str,
    *,
    question: str,
    interactive: bool,
    attached: tuple[Attachment, ...] = (),
) -> int:
    """Ask one question (one-shot, pipe) or run the REPL on a connected client."""
    out, err = sys.stdout, sys.stderr

    conversation, resumed_from = open_conversation(config, model, err, interactive=interactive)
    sampling = Sampling(model, config.temperature, config.top_p, config.max_tokens, config.seed)
    hub, toolbox, view = _tools(config, out if interactive else err)
    recorder = _recorder(config, base_url, err)
    session = Session(
        client,
        conversation,
        sampling,
        stream=config.stream,
        completions=config.completions,
        tools=toolbox if config.tools else None,
        tool_view=view,
        on_exchange=recorder.record if recorder is not None else None,
        window=ContextWindow.of_server(base_url, config.api_key, model, config.context_length),
    )
    session.role = config.role.name if config.role is not None else None
    session.server = config.server
    try:
        if not interactive:
            try:
                return one_shot(session, config, question, out, attached)
            finally:
                if session.conversation.autosave_failure:
                    err.write(f"chat: {visible(session.conversation.autosave_failure)}\n")
        return _repl(config, session, toolbox, resumed_from, attached)
    finally:
        if hub is not None:
            hub.close()
        if recorder is not None:
            recorder.close()


def _recorder(config: Config, base_url: str, err: TextIO) -> Recorder | None:
    if not config.history:
        return None
    from chat_cli.history.recorder import Recorder  # noqa: PLC0415 (sqlite3 at the first answer)

    def warn(line: str) -> None:
        err.write(f"chat: {visible(line)}\n")
        err.flush()

    return Recorder(config.paths.history_db, config.paths.conversations_dir, base_url, warn)


def _tools(config: Config, out: TextIO) -> tuple[McpHub | None, Toolbox | None, ToolView | None]:
    """Tools for the session when MCP servers are configured; the hub starts them lazily."""
    if not config.mcp:
        return None, None, None
    from chat_cli.tools.loop import ToolView, terminal_stdin  # noqa: PLC0415
    from chat_cli.tools.mcp_client import McpHub  # noqa: PLC0415 (asyncio: only with tools)
    from chat_cli.tools.toolbox import Toolbox  # noqa: PLC0415

    view = ToolView(
        out, terminal_stdin(), styled=out.isatty() and not (config.plain or config.json)
    )
    # Which servers are still starting: for a person waiting at a terminal, not for a log.
    hub = McpHub(list(config.mcp), view.problem, view.notice if out.isatty() else None)
    toolbox = Toolbox(
        hub,
        choice=config.tool_choice,
        yes=config.yes,
        max_rounds=config.max_tool_rounds,
        timeout=config.tool_timeout,
    )
    return hub, toolbox, view


def _switcher(config: Config, session: Session, toolbox: Toolbox | None) -> Switcher:
    from chat_cli.roles import BUILTINS  # noqa: PLC0415 (REPL only)
    from chat_cli.servers import Server  # noqa: PLC0415
    from chat_cli.switching import Switcher  # noqa: PLC0415

    default = Server("default", config.url, config.api_key)
    return Switcher(
        session,
        roles=config.roles or BUILTINS,
        servers={"default": default, **config.servers},
        base=config.base,
        toolbox=toolbox,
    )


def _repl(
    config: Config,
    session: Session,
    toolbox: Toolbox | None,
    resumed_from: Path | None,
    attached: tuple[Attachment, ...] = (),
) -> int:
    out = sys.stdout
    conversation = session.conversation
    model = session.sampling.model

    from chat_cli.repl import Repl  # noqa: PLC0415 (prompt-toolkit: REPL only)

    console = _make_console(out)
    base_url = session.client.base_url
    where = f" · server {config.server}" if config.servers else ""
    role = f" · role {session.role}" if session.role else ""
    # The model's id is the server's; a conversation's name is a file's: shown, not run.
    console.print(
        f"Connected to {base_url}{where} · model {visible(model)}{role}", style="bold", markup=False
    )
    if attached:
        files = ", ".join(a.label() for a in attached)
        console.print(f"Attached {visible(files)}: sent with the first question", style="dim",
                      markup=False)  # fmt: skip
    if resumed_from is not None:
        console.print(
            f"Resumed {visible(resumed_from.stem)} ({len(conversation.messages)} messages)",
            style="dim",
            markup=False,
        )
    console.print(
        "/help for commands · Alt-Enter or Ctrl-J for a newline · Ctrl-D to exit",
        style="dim",
        markup=False,
    )
    repl = Repl(
        session,
        console,
        history_file=config.paths.history_file,
        conversations_dir=config.paths.conversations_dir,
        history_db=config.paths.history_db if config.history else None,
        attached=attached,
        markdown=not config.plain,
        show_reasoning=not config.hide_reasoning,
        debug=config.debug,
        switcher=_switcher(config, session, toolbox),
    )
    return repl.run()


def _named(config: Config, name: str) -> Path:
    directory = config.paths.conversations_dir
    path = chats.find(directory, name) or _logged(config, name)
    if path is None:
        raise ConfigError(
            f"no saved conversation named {name!r} in {directory} (/chats lists "
            "them); to continue the last one with a question, write: chat QUESTION --resume"
        )
    return path


def _logged(config: Config, name: str) -> Path | None:
    """A conversation of the history (`chat logs` names it), written into the folder."""
    if not config.paths.history_db.is_file():
        return None
    from chat_cli.history.recorder import restore  # noqa: PLC0415 (sqlite3: only here)

    return restore(config.paths.history_db, config.paths.conversations_dir, name)


def _resumed(config: Config, err: TextIO) -> tuple[Path, conv_mod.Conversation] | None:
    directory = config.paths.conversations_dir
    if isinstance(config.resume, str):
        path = _named(config, config.resume)
        return path, conv_mod.load(path)

    def warn(line: str) -> None:
        err.write(f"chat: {visible(line)}\n")

    found = chats.latest(directory, warn)
    if found is None:
        err.write("chat: no saved conversation to resume; starting a new one\n")
    return found


def open_conversation(
    config: Config, model: str, err: TextIO, *, interactive: bool
) -> tuple[conv_mod.Conversation, Path | None]:
    """The conversation to continue (--resume) or a new one, and the file it came from.

    REPL chats are autosaved; a one-shot question only with --resume, so scripts and pipes
    do not fill the folder. Starting a REPL prunes old unnamed chats."""
    directory = config.paths.conversations_dir
    found = _resumed(config, err) if config.resume else None
    if found is None:
        conversation = conv_mod.Conversation(system=config.system, model=model)
        if interactive or config.resume:
            conversation.path = chats.new_autosave_path(directory)
    else:
        conversation = found[1]
        conversation.path = found[0]
        conversation.system = config.system or conversation.system
        conversation.model = model
    if interactive:
        chats.prune(directory, current=conversation.path)
    return conversation, found[0] if found else None


def one_shot(
    session: Session,
    config: Config,
    question: str,
    out: TextIO,
    attached: tuple[Attachment, ...] = (),
) -> int:
    if config.json:
        renderer: Renderer = PlainRenderer(io.StringIO(), footer=False, styled=False)
        failure: ChatError | None = None
        try:
            answer = session.ask(question, renderer, attachments=attached)
        except ChatError as error:
            failure = error
            answer = session.last_answer or Answer()
        # Exact text: JSON escapes C0 controls, json_safe DEL and C1 (a terminal may run them).
        document = json.dumps(_answer_json(session, answer, failure), ensure_ascii=False)
        out.write(json_safe(document) + "\n")
        if failure is not None:
            raise failure
        return 0 if not _interrupted(session) else EXIT_INTERRUPTED
    tty = out.isatty()

    def fresh() -> Renderer:
        if tty and not config.plain:
            return make_renderer(
                _make_console(out),
                out,
                markdown=True,
                show_reasoning=not config.hide_reasoning,
                footer=True,
                page_marks=page.enabled(os.environ, tty),
                context_limit=limit,
            )
        # plain text needs no rich console (and not its import time)
        return PlainRenderer(out, footer=tty, styled=tty, context_limit=limit)

    limit = session.window.limit if tty and session.window is not None else None

    session.ask(question, fresh(), fresh, attached)
    return 0 if not _interrupted(session) else EXIT_INTERRUPTED


def _interrupted(session: Session) -> bool:
    return session.last_note == INTERRUPTED


def _answer_json(session: Session, answer: Answer, failure: ChatError | None) -> dict[str, object]:
    usage = answer.usage
    return {
        "model": session.sampling.model,
        "content": answer.text,
        "reasoning": answer.reasoning_text or None,
        "finish_reason": answer.finish_reason,
        "usage": None
        if usage is None
        else {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "estimated": usage.estimated,
        },
        "timings": {
            "ttft_s": answer.ttft,
            "total_s": answer.elapsed,
            "tokens_per_s": answer.tokens_per_s,
        },
        "tool_calls": [
            {"name": r.name, "arguments": r.arguments, "result": r.result, "error": r.error}
            for r in (session.tools.records if session.tools is not None else [])
        ],
        "error": None if failure is None else failure.one_shot(),
        "note": session.notice,
    }
