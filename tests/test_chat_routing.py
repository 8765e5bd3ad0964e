"""The session key chat sends so a router keeps a conversation on one replica."""

from __future__ import annotations

from chat_cli.api.routing import SESSION_HEADER, session_headers

SYSTEM = {"role": "system", "content": "Be brief."}
FIRST = {"role": "user", "content": "What is a PTY?"}


def key(messages: list[dict[str, object]]) -> str:
    return session_headers({"model": "m", "messages": messages, "stream": True})[SESSION_HEADER]


def test_every_turn_of_a_conversation_has_the_same_key() -> None:
    turns = [SYSTEM, FIRST]
    first = key(turns)
    turns += [
        {"role": "assistant", "content": "A pseudo-terminal."},
        {"role": "user", "content": "And?"},
    ]
    assert key(turns) == first
    assert key([SYSTEM, FIRST]) == first  # /retry, or the chat reloaded from disk
    assert len(first) == 32 and first.isalnum()
    assert "PTY" not in first  # a digest: the text itself never rides in a header


def test_another_opening_or_system_prompt_is_another_conversation() -> None:
    assert key([SYSTEM, FIRST]) != key([SYSTEM, {"role": "user", "content": "Other."}])
    assert key([SYSTEM, FIRST]) != key([{"role": "system", "content": "Be long."}, FIRST])
    assert key([FIRST]) != key([SYSTEM, FIRST])


def test_completions_prompts_key_on_their_start_and_empty_bodies_send_none() -> None:
    start = "User: hi\n" * 100
    assert session_headers({"prompt": start}) == session_headers({"prompt": start + "more\n"})
    assert session_headers({"prompt": ""}) == {}
    assert session_headers({"messages": []}) == {}
