"""Untrusted text never reaches the terminal with its control sequences live (#18 item 1).

Every source of text chat did not write (answer, reasoning, tool arguments and results, tool
names and descriptions, MCP errors, HTTP error bodies, model ids, conversation and file names)
carries tests/hostile.py's PAYLOAD: OSC 52, OSC 0/2, CSI 2J, DCS, 8-bit C1, the page's OSC
7337, BEL/BS/DEL. Each output mode (REPL with markdown, REPL --plain, one-shot on a terminal,
one-shot piped, --json) runs for real against the fault server and a hostile MCP server of
the tests' own; the output must hold none of the sequences live, and each source's tag must
be followed by the sequences in visible form (shown, so not dropped either).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest
from rich.console import Console

from chat_cli.api.answer import Answer
from chat_cli.render.markdown import MarkdownRenderer
from chat_cli.render.page import OSC
from chat_cli.render.plain import PlainRenderer, Renderer
from mixvllm_common.terminal_text import json_safe, visible
from tests.chat_support import ANSI, CHAT, PROMPT_READY, ROOT, chat_env, fake_server
from tests.fake_openai import FakeServer
from tests.hostile import PAYLOAD, SEQUENCES

SHOWN = visible(PAYLOAD).replace("\\", "")  # as _flat has it
HOSTILE_MCP = f"evil={sys.executable} {ROOT / 'tests' / 'mcp_hostile.py'}"
ANSWER = f"ANS{PAYLOAD} [bold]x[/bold]\n\n```\nCODE{PAYLOAD}\n```\n"
# What a terminal would act on: the sequences themselves and any 8-bit C1 byte.
LIVE = [s for s in SEQUENCES.values() if "\x1b" in s] + [chr(c) for c in range(0x80, 0xA0)]
LIVE += ["\x7f"]


def _json(text: str) -> str:
    return json.dumps(text)  # ASCII only: \u001b, \u009b


TOOLS_QUESTION = (
    f'@fault:call echo {{"text": {_json("RES" + PAYLOAD)}}} | TOOL{PAYLOAD} {{}} | '
    f'fail {{"reason": {_json("MCPERR" + PAYLOAD)}}} | echo ARG{PAYLOAD}'
)


# -- the function itself ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]52;c;eA==\x07", "^[]52;c;eA==^G"),
        ("\x1b]0;t\x07\x1b]2;t\x1b\\", "^[]0;t^G^[]2;t^[\\"),
        ("\x1b[2J", "^[[2J"),
        ("\x1bPq\x1b\\", "^[Pq^[\\"),
        ("\x9b2J\x9d0;t\x9c\x90\x80\x9f", "<U+009B>2J<U+009D>0;t<U+009C><U+0090><U+0080><U+009F>"),
        ("\x00\x01\x1f\x7f\r", "^@^A^_^?^M"),
        ("a\tb\nc ü 日本 \xa0", "a\tb\nc ü 日本 \xa0"),  # kept: tab, newline, text
        ("ü\x1b[2J", "ü^[[2J"),  # the non-ASCII path
    ],
)
def test_visible_shows_every_control_but_newline_and_tab(raw: str, shown: str) -> None:
    assert visible(raw) == shown
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", visible(raw))


def test_json_escapes_del_and_c1_and_parses_back_exactly() -> None:
    document = json_safe(json.dumps({"content": PAYLOAD}, ensure_ascii=False))
    assert json.loads(document) == {"content": PAYLOAD}
    assert not any(live in document for live in LIVE)


# -- the renderers ----------------------------------------------------------------------
def _markdown(live: bool, marks: bool) -> Callable[[io.StringIO], Renderer]:
    def make(out: io.StringIO) -> Renderer:
        console = Console(file=out, width=400, height=50, force_terminal=True)
        return MarkdownRenderer(console, live=live, page_marks=marks, refresh_s=0.0)

    return make


RENDERERS: dict[str, Callable[[io.StringIO], Renderer]] = {
    "markdown, live, page marks": _markdown(True, True),
    "markdown, not live": _markdown(False, False),
    "plain, styled": lambda out: PlainRenderer(out, footer=True, styled=True),
    "plain": lambda out: PlainRenderer(out, footer=False, styled=False),
}


@pytest.mark.parametrize("kind", RENDERERS)
def test_renderers_show_answer_and_reasoning_visibly(kind: str) -> None:
    out = io.StringIO()
    renderer = RENDERERS[kind](out)
    renderer.begin()
    renderer.reasoning(f"RSN{PAYLOAD}")
    if renderer.live:
        renderer.tick()  # the live region shows the reasoning so far
    for piece in (ANSWER[:7], ANSWER[7:40], ANSWER[40:]):  # sequences cut across pieces
        renderer.content(piece)
    answer = Answer()
    answer.content = [ANSWER]
    renderer.finish(answer, None)
    raw = out.getvalue()
    _no_live_sequences(raw, marks=kind.endswith("page marks"))
    shown = _flat(raw)
    assert f"ANS{SHOWN} [bold]x[/bold]" in shown and f"CODE{SHOWN}" in shown
    if renderer.live:
        assert f"RSN{SHOWN}" in shown


def test_the_page_copy_marker_is_chats_own_and_carries_the_visible_code() -> None:
    out = io.StringIO()
    renderer = _markdown(False, True)(out)
    renderer.content(ANSWER)
    renderer.finish(Answer(), None)
    raw = out.getvalue()
    assert raw.count(f"\x1b]{OSC};block\x07") == 1  # one code block: one button
    [data] = re.findall(f"\x1b]{OSC};code;([A-Za-z0-9+/=]*)\x07", raw)
    assert base64.b64decode(data).decode() == f"CODE{visible(PAYLOAD)}\n"  # exact: a code block


# -- chat for real, in each output mode -------------------------------------------------
@dataclass(frozen=True)
class Source:
    tag: str  # written right before PAYLOAD wherever the source shows it
    runs: tuple[str, ...]  # the one-shot runs (below) that show it; the REPL shows them all
    shown: int = len(SHOWN)  # how much of PAYLOAD shows (a listing cuts a long line)


SOURCES = {
    "answer": Source("ANS", ("answer",)),
    "reasoning": Source("RSN", ()),  # one-shot: a word count (the live line: renderer test)
    "tool arguments": Source("ARG", ("tools",)),
    "tool results": Source("RES", ("tools",)),
    "tool names": Source("TOOL", ("tools",)),
    "tool descriptions": Source("DESC", (), shown=40),  # /tools only, cut to its width
    "MCP error messages": Source("MCPERR", ("tools",)),
    "MCP server's last words": Source("DIED", ("tools",)),
    "HTTP error bodies": Source("HTTP", ("http",)),
    "model ids": Source("MODEL", ("model",)),
    "conversation names": Source("CHAT", ()),  # /chats and the REPL's banner
    "file names": Source("FILE", ("answer",)),
}


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[FakeServer, dict[str, str]]]:
    """The fault server, a conversation folder with hostile names, and chat's environment."""
    with fake_server(
        answer=ANSWER,
        reasoning=f"RSN{PAYLOAD}",
        error_message=f"HTTP{PAYLOAD}",
        models=["fake-model", f"MODEL{PAYLOAD}"],
    ) as fake:
        env = chat_env(tmp_path, fake.url, MIXVLLM_SESSION="test", COLUMNS="400")
        folder = tmp_path / "data" / "mixvllm" / "conversations"
        folder.mkdir(parents=True)
        good = folder / f"CHAT{PAYLOAD}.json"
        good.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"}]}))
        bad = folder / f"FILE{PAYLOAD}.json"
        bad.write_text("not json")
        os.utime(good, (time.time() - 60, time.time() - 60))  # the broken one is the latest
        (tmp_path / "died.py").write_text(
            f"import sys\nsys.stderr.write({('DIED' + PAYLOAD)!r} + '\\n')\nsys.exit(1)\n"
        )
        yield fake, env


def _tool_flags(tmp_path: Path) -> list[str]:
    return ["--yes", "--mcp", HOSTILE_MCP, "--mcp", f"died={sys.executable} {tmp_path}/died.py"]


ONE_SHOT_RUNS: dict[str, Callable[[Path], list[str]]] = {
    "answer": lambda tmp: ["@fault:reasoning", "--resume"],
    "tools": lambda tmp: [*_tool_flags(tmp), TOOLS_QUESTION],
    "http": lambda tmp: ["@fault:http500"],
    "model": lambda tmp: ["--model", "nosuch", "hi"],
}


def _flat(raw: str) -> str:
    """What a terminal shows of `raw`, line breaks and runs of spaces as one space, and no
    backslashes: markdown takes the one in `^[\\^[` (a visible ST, then ESC) as an escape."""
    return " ".join(ANSI.sub("", raw).split()).replace("\\", "")


def _no_live_sequences(raw: str, *, marks: bool = False) -> None:
    for name, sequence in SEQUENCES.items():
        if "\x1b" in sequence or sequence.startswith(("\x9b", "\x9d")):
            assert sequence not in raw, f"{name} reached the terminal live"
    assert not re.search("[\x7f-\x9f]", raw), "DEL or an 8-bit control reached the terminal"
    for osc in ("52", "0", "2"):
        assert f"\x1b]{osc};" not in raw
    assert "\x1b[2J" not in raw and "\x1bP" not in raw
    if not marks:
        assert f"\x1b]{OSC};" not in raw


def _assert_shown(raw: str, sources: list[str]) -> None:
    _no_live_sequences(raw, marks=True)
    shown = _flat(raw)
    missing = [s for s in sources if SOURCES[s].tag + SHOWN[: SOURCES[s].shown] not in shown]
    assert not missing, f"not shown visibly: {missing}\n{shown}"


@pytest.mark.parametrize("mode", ["one-shot on a terminal", "one-shot piped", "--json"])
@pytest.mark.parametrize("run", ONE_SHOT_RUNS)
def test_one_shot_shows_untrusted_text_visibly(
    hostile: tuple[FakeServer, dict[str, str]],
    tmp_path: Path,
    spawn_chat: Callable[..., pexpect.spawn],
    mode: str,
    run: str,
) -> None:
    _, env = hostile
    args = ONE_SHOT_RUNS[run](tmp_path)
    sources = [name for name, source in SOURCES.items() if run in source.runs]
    if mode == "one-shot on a terminal":
        child = spawn_chat(*args, env=env, dimensions=(50, 400), timeout=60)
        child.expect(pexpect.EOF)
        _assert_shown(child.before, sources)
        return
    json_mode = mode == "--json"
    result = subprocess.run(
        [*CHAT, *(["--json"] if json_mode else []), *args],
        capture_output=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    if not json_mode:
        _assert_shown(out + err, sources)
        return
    _no_live_sequences(out)
    if out:  # the model and http runs fail before any answer: nothing on stdout
        report = json.loads(out)
        if run == "answer":  # --json keeps the exact text
            assert report["content"] == ANSWER and report["reasoning"] == f"RSN{PAYLOAD}"
        if run == "tools":
            results = [call["result"] for call in report["tool_calls"]]
            assert f"RES{PAYLOAD}" in results
            assert any(f"MCPERR{PAYLOAD}" in r for r in results)
    _assert_shown(err, [s for s in sources if s not in ("answer",)])


@pytest.mark.parametrize("plain", [False, True], ids=["markdown", "plain"])
def test_the_repl_shows_untrusted_text_visibly(
    hostile: tuple[FakeServer, dict[str, str]],
    tmp_path: Path,
    spawn_chat: Callable[..., pexpect.spawn],
    plain: bool,
) -> None:
    _, env = hostile
    flags = ["--plain"] if plain else []
    child = spawn_chat(
        *flags, "--resume", *_tool_flags(tmp_path), env=env, dimensions=(50, 400), timeout=60
    )
    raw: list[str] = []

    def line(text: str, *, paste: bool = False) -> None:
        child.expect(PROMPT_READY)
        raw.append(child.before)
        # A paste carries the control characters in: typed, they would be keys.
        child.send(f"\x1b[200~{text}\x1b[201~\r" if paste else f"{text}\r")

    line("@fault:reasoning")
    line("/reasoning")
    line(TOOLS_QUESTION, paste=True)
    for command in ("/last-tool", "/tools", "/model", "/chats", "@fault:http500"):
        line(command)
    line("/exit")
    child.expect(pexpect.EOF)
    raw.append(child.before)
    _assert_shown("".join(raw), list(SOURCES))
