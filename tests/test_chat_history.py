"""The history database: logging, `chat logs`, `/search`, resume, import, and its faults."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from chat_cli import chats
from chat_cli.api.client import ChatClient, Sampling
from chat_cli.commands import Commands
from chat_cli.conversation import Conversation, Message
from chat_cli.history import logs
from chat_cli.history.recorder import Recorder
from chat_cli.history.spool import spool_path
from chat_cli.history.store import MARK_OFF, MARK_ON, Exchange, Store
from chat_cli.render.plain import PlainRenderer
from chat_cli.session import Session
from tests.chat_support import CHAT, PROMPT_READY, ROOT, chat_env, exit_status, fake_server
from tests.fake_openai import DEFAULT_ANSWER, MODEL, FakeServer


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "mixvllm" / "history.db"


def chat(tmp_path: Path, url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHAT, *args], env=chat_env(tmp_path, url, **env), capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def exchange(uid: str, question: str, answer: str, **more: object) -> Exchange:
    values: dict[str, object] = {
        "uid": uid, "conversation": f"c-{uid}", "created": 1.0, "system": None,
        "started": time.time(), "ended": None, "question": question, "answer": answer,
        "messages": [{"role": "user", "content": question},
                     {"role": "assistant", "content": answer}],
        "model": MODEL,
    }  # fmt: skip
    values.update(more)
    return Exchange(**values)  # type: ignore[arg-type]


def questions(path: Path) -> list[str]:
    store = Store(path, create=False)
    try:
        return [hit.question for hit in reversed(store.recent(10_000))]
    finally:
        store.close()


# -- the store ------------------------------------------------------------------------------
def test_recent_and_search_ranked_with_snippets_and_filters(tmp_path: Path) -> None:
    store = Store(tmp_path / "h.db")
    store.add([
        exchange("1", "how do I restart nginx", "systemctl restart nginx; nginx -t first"),
        exchange("2", "what is a pod", "a group of containers", model="other"),
        exchange("3", "tune postgres", "nginx is unrelated here"),
    ])  # fmt: skip
    assert [h.question for h in store.recent(2)] == ["tune postgres", "what is a pod"]
    assert [h.question for h in store.recent(5, model="other")] == ["what is a pod"]
    assert store.recent(5, since=time.time() + 60) == []
    hits = store.search("nginx", 5)
    assert [h.question for h in hits] == ["how do I restart nginx", "tune postgres"]  # ranked
    assert f"{MARK_ON}nginx{MARK_OFF}" in (hits[0].snippet or "")
    assert [h.question for h in store.search("restart NGINX", 5)] == ["how do I restart nginx"]
    assert [h.question for h in store.search("contain", 5)] == ["what is a pod"]  # prefixes
    # What a user types is words, never FTS5 syntax: none of this may raise.
    for text in ['"', "nginx -t", "a:b", "NOT", "(", "*", "nginx AND"]:
        store.search(text, 5)
    store.add([exchange("1", "how do I restart nginx", "again")])  # the same uid: written once
    assert len(store.recent(10)) == 3
    store.close()


def test_database_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "data" / "history.db"
        store = Store(path)
        store.add([exchange("1", "secret question", "secret answer")])
        for name in ("history.db", "history.db-wal", "history.db-shm"):
            assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        store.close()
        path.chmod(0o644)  # made readable by someone: the next open takes it back
        Store(path).close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from chat_cli.history.store import Exchange, Store
    path, tag, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    store = Store(path)
    for n in range(count):
        text = f"{tag} question {n}"
        store.add([Exchange(f"{tag}-{n}", f"conv-{tag}", 1.0, None, time.time(), None, text,
                            f"{tag} answer {n}", [{"role": "user", "content": text}])])
    print("done", flush=True)
""")
READER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from chat_cli.history.store import Store
    path = Path(sys.argv[1])
    seen = 0
    while True:
        store = Store(path, create=False)
        count = len(store.recent(100_000))
        found = len(store.search("answer", 100_000))
        store.close()
        assert seen <= count and found <= count + 400, (seen, count, found)
        seen = count
        if count == 2 * int(sys.argv[2]):
            break
    print("read", seen, flush=True)
""")


def test_two_writers_and_a_reader_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    Store(path).close()
    count = 150
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, str(count)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ] + [subprocess.Popen([sys.executable, "-c", READER, str(path), str(count)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    store = Store(path, create=False)
    written = {h.question for h in store.recent(10_000)}
    assert written == {f"{t} question {n}" for t in "ab" for n in range(count)}
    assert len(store.search("question", 10_000)) == 2 * count
    store.close()


# -- logging from chat ----------------------------------------------------------------------
def test_one_shot_is_logged_with_its_settings_and_timings(tmp_path: Path, fake: FakeServer) -> None:
    result = chat(tmp_path, fake.url, "--temperature", "0.25", "--seed", "7", "what is nginx?")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    listed = chat(tmp_path, fake.url, "logs", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["question"] == "what is nginx?" and row["answer"] == DEFAULT_ANSWER
    assert row["model"] == MODEL and row["server"] == fake.url + "/v1"
    assert row["sampling"] == {"temperature": 0.25, "seed": 7}
    assert row["ttft_s"] > 0 and row["completion_tokens"] > 0
    # The fake answers in well under 0.5 s of generation: no rate is claimed for that.
    assert row["tokens_per_s"] is None or row["tokens_per_s"] > 0
    assert row["ended"] >= row["started"] and row["note"] is None


def test_no_history_flag_and_config_key_turn_it_off(tmp_path: Path, fake: FakeServer) -> None:
    assert chat(tmp_path, fake.url, "--no-history", "hi").returncode == 0
    assert not db_path(tmp_path).exists()
    config = tmp_path / "config" / "mixvllm" / "chat.toml"
    config.parent.mkdir(parents=True)
    config.write_text("history = false\n")
    assert chat(tmp_path, fake.url, "hi").returncode == 0
    assert not db_path(tmp_path).exists()
    assert chat(tmp_path, fake.url, "--history", "hi").returncode == 0  # the flag wins
    assert questions(db_path(tmp_path)) == ["hi"]


def test_chat_logs_lists_filters_and_searches(tmp_path: Path, fake: FakeServer) -> None:
    assert chat(tmp_path, fake.url, "restart nginx gracefully").returncode == 0
    assert chat(tmp_path, fake.url, "-m", "other-model", "what is a pod").returncode == 0
    shown = chat(tmp_path, fake.url, "logs", "-n", "1").stdout
    assert "what is a pod" in shown and "nginx" not in shown
    assert "chat --resume " in shown
    shown = chat(tmp_path, fake.url, "logs", "--model", MODEL).stdout
    assert "restart nginx" in shown and "pod" not in shown
    found = chat(tmp_path, fake.url, "logs", "-q", "NGINX")
    assert found.returncode == 0
    assert "[nginx]" in found.stdout and "pod" not in found.stdout  # the match marked
    assert chat(tmp_path, fake.url, "logs", "--since", "1h").stdout.count("\n  > ") == 2
    later = chat(tmp_path, fake.url, "logs", "--since", "2999-01-01")
    assert later.stdout == "" and later.stderr == "chat: no exchanges yet\n"
    bad = chat(tmp_path, fake.url, "logs", "--since", "soon")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--since" in bad.stderr


def test_a_question_that_starts_with_logs_is_a_question(tmp_path: Path, fake: FakeServer) -> None:
    result = chat(tmp_path, fake.url, "logs", "are", "huge,", "why?")
    assert result.returncode == 0 and DEFAULT_ANSWER.split()[0] in result.stdout
    assert fake.state.requests[-1]["messages"][-1]["content"] == "logs are huge, why?"
    assert chat(tmp_path, fake.url, "--", "logs").returncode == 0
    assert fake.state.requests[-1]["messages"][-1]["content"] == "logs"
    assert not logs.is_logs_command(["logs", "are", "big"])
    assert logs.is_logs_command(["logs"]) and logs.is_logs_command(["logs", "-q", "x"])


def test_a_logged_conversation_is_resumed_by_its_id(tmp_path: Path, fake: FakeServer) -> None:
    assert chat(tmp_path, fake.url, "my name is Ada").returncode == 0
    (row,) = json.loads(chat(tmp_path, fake.url, "logs", "--json").stdout)
    result = chat(tmp_path, fake.url, "--resume", row["conversation"], "what is my name?")
    assert result.returncode == 0, result.stderr
    sent = [m["content"] for m in fake.state.requests[-1]["messages"]]
    assert sent == ["my name is Ada", DEFAULT_ANSWER, "what is my name?"]
    rows = json.loads(chat(tmp_path, fake.url, "logs", "--json").stdout)
    assert {r["conversation"] for r in rows} == {row["conversation"]}  # the same one goes on


def test_history_text_is_shown_not_run(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    hostile = "evil \x1b]52;c;cm0gLXJmIH4=\x07 \x1b[2J\x9b31m answer"
    store = Store(path)
    store.add([exchange("1", "q \x1b]0;title\x07", hostile, model="m\x1b[5m")])
    store.close()
    env = chat_env(tmp_path, "http://127.0.0.1:9")
    for args in (["logs"], ["logs", "-q", "evil"], ["logs", "--json"]):
        result = subprocess.run([*CHAT, *args], env=env, capture_output=True, text=True,
                                timeout=60, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x9b" not in result.stdout, args
    hits = Store(path, create=False).search("evil", 5)
    for styled in (True, False):
        shown = "\n".join(logs.lines(hits, 200, styled=styled))
        ours = shown.replace(logs.HIGHLIGHT[0], "").replace(logs.HIGHLIGHT[1], "")
        ours = ours.replace("\x1b[2m", "").replace("\x1b[22m", "")
        assert "\x1b" not in ours and "\x9b" not in ours and "^[]52;" in ours


# -- faults ---------------------------------------------------------------------------------
def test_a_locked_database_keeps_the_exchange_and_writes_it_later(
    tmp_path: Path, fake: FakeServer
) -> None:
    assert chat(tmp_path, fake.url, "first").returncode == 0
    holder = sqlite3.connect(db_path(tmp_path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = chat(tmp_path, fake.url, "second")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 0 and DEFAULT_ANSWER.split()[0] in result.stdout
    assert result.stderr.count("\n") == 1 and "locked" in result.stderr, result.stderr
    assert "written when the database works again" in result.stderr
    assert "Traceback" not in result.stderr
    kept = spool_path(db_path(tmp_path)).stat()
    assert kept.st_size > 0 and stat.S_IMODE(kept.st_mode) == 0o600
    assert chat(tmp_path, fake.url, "third").stderr == ""
    assert questions(db_path(tmp_path)) == ["first", "second", "third"]


def test_a_damaged_database_costs_one_line_and_no_exchange(
    tmp_path: Path, fake: FakeServer
) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, it is a text file\n" * 200)
    result = chat(tmp_path, fake.url, "keep me")
    assert result.returncode == 0 and DEFAULT_ANSWER.split()[0] in result.stdout
    assert result.stderr.count("\n") == 1 and "damaged" in result.stderr, result.stderr
    broken = chat(tmp_path, fake.url, "logs")
    assert broken.returncode == 1 and broken.stderr.count("\n") == 1
    assert "damaged" in broken.stderr and "Traceback" not in broken.stderr
    path.rename(path.with_name("history.db.broken"))  # what the line says to do
    assert chat(tmp_path, fake.url, "and me").stderr == ""
    assert questions(path) == ["keep me", "and me"]


# -- the REPL's part, and the import --------------------------------------------------------
@pytest.fixture
def session(fake: FakeServer, tmp_path: Path) -> Iterator[tuple[Session, Recorder]]:
    folder = tmp_path / "conversations"
    lines: list[str] = []
    recorder = Recorder(tmp_path / "history.db", folder, fake.url + "/v1", lines.append)
    conversation = Conversation(path=chats.new_autosave_path(folder))
    client = ChatClient(fake.url + "/v1", None, 10.0)
    yield Session(client, conversation, Sampling(MODEL), on_exchange=recorder.record), recorder
    assert lines == []
    recorder.close()
    client.close()


def ask(session: Session, text: str) -> None:
    session.ask(text, PlainRenderer(io.StringIO(), footer=False, styled=False))


def test_search_in_the_repl_and_load_a_hit(
    session: tuple[Session, Recorder], tmp_path: Path
) -> None:
    chat_session, recorder = session
    ask(chat_session, "remember the zebra")
    first = chat_session.conversation.path
    assert first is not None
    first.unlink()  # only the history has it now
    out = io.StringIO()
    commands = Commands(chat_session, out, tmp_path / "conversations", recorder.db)
    commands.run("/clear")
    commands.run("/search zebra")
    shown = out.getvalue()
    assert "remember the [zebra]" in shown and f"/load {first.stem}" in shown
    commands.run(f"/load {first.stem}")
    assert [m.content for m in chat_session.conversation.messages] == [
        "remember the zebra",
        DEFAULT_ANSWER,
    ]
    commands.run("/search nothing-like-this")
    assert out.getvalue().endswith("(nothing found)\n")


def saved(folder: Path, name: str, messages: list[Message], created: float) -> Conversation:
    conversation = Conversation(system="be terse", messages=messages, model="m", created=created)
    conversation.save(folder / f"{name}.json", make_dirs=True)
    return conversation


def test_json_conversations_are_imported_once_and_losslessly(
    session: tuple[Session, Recorder], tmp_path: Path
) -> None:
    folder = tmp_path / "conversations"
    call = {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
    old = saved(folder, "named-one", [
        Message("user", "list files"),
        Message("assistant", "", reasoning="use ls", tool_calls=[call]),
        Message("tool", "a.txt\nb.txt", tool_call_id="c1", name="ls"),
        Message("assistant", "two files"),
        Message("user", "and now?"),
        Message("assistant", "half an ans", incomplete="interrupted"),
    ], created=1_700_000_000.5)  # fmt: skip
    (folder / "broken.json").write_text("{not json")
    chat_session, recorder = session
    # This chat was resumed from a file written before the history existed.
    current = saved(folder, "current", [Message("user", "q0"), Message("assistant", "a0")], 2.0)
    current.path, current.model = folder / "current.json", MODEL  # as chat --resume sets them
    chat_session.conversation = current
    ask(chat_session, "q1")
    store = Store(recorder.db, create=False)
    restored = store.conversation("named-one")
    assert restored is not None and restored.to_json() == old.to_json()
    mine = store.conversation("current")
    assert mine is not None and mine.to_json() == current.to_json()  # nothing twice
    assert len(store.recent(100)) == 4
    store.close()
    ask(chat_session, "q2")  # the folder is not imported again
    store = Store(recorder.db, create=False)
    assert len(store.recent(100)) == 5
    assert store.import_once(folder) == 0
    store.close()


def test_start_up_and_the_first_prompt_load_no_sqlite(tmp_path: Path) -> None:
    # The REPL's modules and the recorder are loaded before the first prompt; --help and the
    # `logs` check run on every start.
    code = (
        "import sys; from chat_cli.__main__ import main\n"
        "import chat_cli.cli, chat_cli.repl, chat_cli.commands, chat_cli.history.recorder\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('sqlite3' in sys.modules, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], env=chat_env(tmp_path, "http://x"),
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.stderr == "False\n" and "--no-history" in result.stdout


@pytest.mark.embedded
def test_the_real_model_s_exchange_is_logged_found_and_resumed(
    tmp_path: Path, embedded_model_server: Any
) -> None:
    server = embedded_model_server
    key = {"VLLM_API_KEY": server.api_key}
    args = ("--max-tokens", "24", "--seed", "1", "--temperature", "0")
    result = chat(tmp_path, server.base_url, *args, "Name a colour of the sky.", **key)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    (row,) = json.loads(chat(tmp_path, server.base_url, "logs", "--json", **key).stdout)
    assert row["answer"].strip() and row["answer"].strip() in result.stdout, (row, result)
    assert row["model"] == server.model and row["sampling"]["max_tokens"] == 24
    assert 0 < row["completion_tokens"] <= 25 and row["prompt_tokens"] > 0, row
    assert row["ttft_s"] > 0, row
    # No rate is claimed for under 0.5 s of generation; 24 tokens may take less than that.
    assert row["tokens_per_s"] is None or row["tokens_per_s"] > 0, row
    found = chat(tmp_path, server.base_url, "logs", "-q", "colour sky", **key)
    assert "[colour]" in found.stdout and "[sky]" in found.stdout, found
    again = chat(tmp_path, server.base_url, *args, "--resume", row["conversation"],
                 "Say it again.", **key)  # fmt: skip
    assert again.returncode == 0, again.stderr
    rows = json.loads(chat(tmp_path, server.base_url, "logs", "--json", **key).stdout)
    assert [r["conversation"] for r in rows] == [row["conversation"]] * 2


def test_the_repl_logs_and_searches_on_a_real_terminal(
    tmp_path: Path, fake: FakeServer, spawn_chat: Callable[..., pexpect.spawn]
) -> None:
    folder = tmp_path / "data" / "mixvllm" / "conversations"
    saved(folder, "older", [Message("user", "an older zebra"), Message("assistant", "ok")], 5.0)
    child = spawn_chat(env=chat_env(tmp_path, fake.url))
    child.expect(PROMPT_READY)
    child.send("where do zebras live?\r")
    child.expect("tok/s")
    child.expect(PROMPT_READY)
    child.send("/search zebra\r")
    child.expect(r"/load ID continues one")
    shown = child.before
    assert "where do [zebras] live?" in shown  # a prefix matches, highlighted
    assert "an older [zebra]" in shown and "/load older" in shown  # the JSON file imported
    assert "\x1b[1;4m" not in shown
    child.expect(PROMPT_READY)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert exit_status(child) == 0
    assert questions(db_path(tmp_path)) == ["an older zebra", "where do zebras live?"]


def test_tool_calls_and_results_are_logged_and_resumed(tmp_path: Path, fake: FakeServer) -> None:
    server = f"t={sys.executable} {ROOT / 'tests' / 'mcp_server.py'}"
    result = chat(tmp_path, fake.url, "--yes", "--mcp", server, '@fault:call echo {"text": "hi"}')
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(chat(tmp_path, fake.url, "logs", "--json").stdout)
    (call,) = row["tool_calls"]
    assert call["name"] == "echo" and "hi" in call["result"] and call["error"] is False
    assert row["answer"].startswith("tool said: ")
    store = Store(db_path(tmp_path), create=False)
    conversation = store.conversation(row["conversation"])
    store.close()
    assert conversation is not None
    roles = [m.role for m in conversation.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert conversation.messages[1].tool_calls and conversation.messages[2].name == "echo"


def test_chat_logs_imports_the_saved_conversations_first(tmp_path: Path) -> None:
    env = chat_env(tmp_path, "http://127.0.0.1:9")
    run = [*CHAT, "logs"]
    empty = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert empty.returncode == 0 and "no history yet" in empty.stderr
    assert not db_path(tmp_path).exists()
    folder = tmp_path / "data" / "mixvllm" / "conversations"
    saved(folder, "trip", [Message("user", "plan the trip"), Message("assistant", "ok")], 9.0)
    listed = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    assert "plan the trip" in listed.stdout and "chat --resume trip" in listed.stdout


def test_a_repl_says_once_that_history_stopped_and_once_that_it_is_back(tmp_path: Path) -> None:
    said: list[str] = []
    folder = tmp_path / "conversations"
    recorder = Recorder(tmp_path / "history.db", folder, "http://s", said.append)
    recorder.write(exchange("1", "one", "a"))
    holder = sqlite3.connect(tmp_path / "history.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    recorder.write(exchange("2", "two", "a"))
    recorder.write(exchange("3", "three", "a"))
    holder.execute("ROLLBACK")
    holder.close()
    assert len(said) == 1 and "locked" in said[0]
    recorder.write(exchange("4", "four", "a"))
    assert len(said) == 2 and "written again" in said[1] and "2 kept" in said[1]
    recorder.close()
    assert questions(tmp_path / "history.db") == ["one", "two", "three", "four"]
