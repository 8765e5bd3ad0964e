"""`--auth oidc` end to end: the server (as root, in a mount namespace with a throwaway copy of
/etc) logs users in through a real OpenID Connect provider (panva's oidc-provider): its login
page, off to the provider's form, back through the callback, a login cookie, a session as the
user's own account, made on their first login. The client's checks one by one are in
tests/test_terminal_oidc_flow.py."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from tornado import httpclient, websocket

from terminal_server.config import ConfigError, load_config
from terminal_server.login.oidc import MESSAGES
from terminal_server.login.oidc_config import SECRET_ENV
from tests.oidc_support import OidcStack, oidc_stack, sign_in
from tests.support import wait_for_async
from tests.terminal_support import Client, run

ALICE_UID = 2001  # has an account already; bob gets one on his first login


@pytest.fixture(scope="module")
def stack() -> Iterator[OidcStack]:
    with oidc_stack({"alice": ALICE_UID}) as parts:
        yield parts


def log_in(stack: OidcStack, client: httpx.Client, login: str) -> tuple[httpx.Response, str]:
    """From the page, through the provider as `login`, to the callback's answer."""
    page = client.get(stack.url)
    assert page.status_code == 302 and page.headers["location"] == "/login?next=%2F"
    # Answered before the request was read through: the server hangs up, and says so (a
    # next request on that connection would meet a reset).
    assert page.headers["connection"] == "close"
    page = client.get(urljoin(stack.url, page.headers["location"]))
    assert page.status_code == 200 and "Sign in with 127.0.0.1" in page.text
    href = re.search(r'id="sign-in" class="button" href="([^"]+)"', page.text)
    assert href is not None
    back = sign_in(client, urljoin(str(page.url), html.unescape(href.group(1))), login,
                   stop=stack.url + "login/oidc/callback")  # fmt: skip
    return client.get(back), back


def test_a_first_login_makes_the_account_and_the_session_runs_as_it(stack: OidcStack) -> None:
    with httpx.Client(timeout=30) as client:
        answer, _ = log_in(stack, client, "bob")  # Bob@Example.org at the provider
        assert answer.status_code == 302 and answer.headers["location"] == "/"
        cookie = client.cookies.get(f"mixvllm_login_{stack.url.split(':')[2].strip('/')}")
        assert cookie and client.get(stack.url).status_code == 200
    entry = next(
        line.split(":") for line in (stack.root / "etc/passwd").read_text().splitlines()
        if line.startswith("bob:")
    )  # fmt: skip
    home = stack.root / "home" / "bob"
    assert entry[2] == "23000" and entry[5] == str(home) and entry[6] == "/bin/bash"
    assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (23000, 0o700)
    assert "bob:" not in Path("/etc/passwd").read_text()  # the host's files are untouched
    assert {"event": "login", "user": "bob", "method": "oidc", "result": "ok",
            "account": "created"}.items() <= stack.audit_events()[-1].items()  # fmt: skip

    async def session() -> None:
        port = stack.url.split(":")[2].strip("/")
        request = httpclient.HTTPRequest(
            f"ws://127.0.0.1:{port}/ws", headers={"Cookie": f"mixvllm_login_{port}={cookie}"}
        )
        client = Client(await websocket.websocket_connect(request), auto_ack=True)
        try:
            await client.wait_setup()
            client.type('echo "WHO<$(id -un) $(id -u) $HOME>"\r')
            pattern = re.compile(r"WHO<([^<>$]+)>")
            await wait_for_async(lambda: pattern.search(client.output), 10, "id")
            match = pattern.search(client.output)
            assert match is not None and match.group(1) == f"bob 23000 {home}"
        finally:
            await client.close()

    run(session)


def test_an_existing_account_is_used_and_not_made_again(stack: OidcStack) -> None:
    with httpx.Client(timeout=30) as client:
        answer, back = log_in(stack, client, "alice")
        assert answer.status_code == 302
        event = stack.audit_events()[-1]
        assert (event["user"], event["result"]) == ("alice", "ok") and "account" not in event
        # The provider's answer again (a replayed state and code): refused.
        again = client.get(back)
        assert again.status_code == 403 and html.escape(MESSAGES["state"]) in again.text
    assert (stack.root / "etc/passwd").read_text().count("\nalice:") == 1


@pytest.mark.parametrize(
    ("login", "reason", "message"),
    [("mallory", "group", MESSAGES["group"]),  # not in --allowed-groups
     ("rooty", "account", MESSAGES["account"]),  # preferred_username "root"
     ("daemony", "account", MESSAGES["account"])],  # a system account's name
)  # fmt: skip
def test_refused_users_get_one_line_and_an_audit_entry(
    stack: OidcStack, login: str, reason: str, message: str
) -> None:
    with httpx.Client(timeout=30) as client:
        answer, _ = log_in(stack, client, login)
        assert answer.status_code == 403 and html.escape(message) in answer.text
        assert not any(c.startswith("mixvllm_login_") for c in client.cookies)
    event = stack.audit_events()[-1]
    assert (event["result"], str(event["reason"]).split(":")[0]) == ("failed", reason)
    assert (
        "daemon:"
        not in "".join(  # no account of its own was made for a refused name
            line for line in (stack.root / "etc/passwd").read_text().splitlines()[-3:]
        )
        or login != "daemony"
    )


def test_a_token_signed_with_another_key_is_refused_at_the_callback() -> None:
    with oidc_stack({}, misbehave="foreign-key") as bad, httpx.Client(timeout=30) as client:
        answer, _ = log_in(bad, client, "alice")
        assert answer.status_code == 403
        assert "could not be verified" in answer.text
        event = bad.audit_events()[-1]
        assert (event["result"], event["user"]) == ("failed", None)
        assert str(event["reason"]).startswith("signature: ")
        assert "eyJ" not in bad.audit.read_text() + bad.log.read_text()  # no token, logged
        assert "alice:" not in (bad.root / "etc/passwd").read_text()  # no account made


def test_the_answer_is_refused_in_another_browser(stack: OidcStack) -> None:
    with httpx.Client(timeout=30) as client:
        page = client.get(stack.url + "login/oidc?next=/")
        back = sign_in(client, str(page.url), "alice", stop=stack.url + "login/oidc/callback")
    with httpx.Client(timeout=30) as other:  # the link alone, without the browser's cookie
        answer = other.get(back)
        assert answer.status_code == 403 and html.escape(MESSAGES["state"]) in answer.text


def test_oidc_settings_come_from_the_option_table_and_the_secret_never_from_a_flag(
    tmp_path: Path,
) -> None:
    base = ["--auth", "oidc", "--oidc-issuer", "https://sso.example.org/realms/team",
            "--oidc-client-id", "mixvllm", "--public-url", "https://gpu.example.org/"]  # fmt: skip
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    config = load_config([*base, "--oidc-client-secret-file", str(secret_file)], env={})
    assert config.oidc is not None and config.team
    assert config.oidc.client_secret == "from-a-file" and "from-a-file" not in repr(config)
    config = load_config(base, env={SECRET_ENV: "from-env", "MIXVLLM_TERMINAL_OIDC_LABEL": "SSO"})
    assert config.oidc is not None and (config.oidc.client_secret, config.oidc.label) == (
        "from-env", "SSO",
    )  # fmt: skip
    for argv, env, message in [
        (base, {}, SECRET_ENV),
        (base[:-2], {SECRET_ENV: "x"}, "--public-url"),
        ([*base[:3], "http://sso.example.org", *base[4:]], {SECRET_ENV: "x"}, "https://"),
        ([*base, "--oidc-uid-range", "10-20"], {SECRET_ENV: "x"}, "--oidc-uid-range"),
        ([*base, "--oidc-username-map", "upper"], {SECRET_ENV: "x"}, "--oidc-username-map"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(argv, env=env)
    # No flag takes the secret (argparse reads this one as --oidc-client-secret-file), and
    # the message does not repeat it.
    with pytest.raises(ConfigError) as caught:
        load_config([*base, "--oidc-client-secret", "on-the-command-line"], env={})
    assert "on-the-command-line" not in str(caught.value)
