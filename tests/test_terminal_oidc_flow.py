"""The OpenID Connect client (terminal_server/login/oidc_*.py) against a real provider
(panva's oidc-provider, tests/oidc/): a user signs in on its form over real HTTP, and the
answer their browser would bring back is what the client checks. The server's own callback
route runs the same code in tests/test_terminal_oidc.py."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from terminal_server.login import oidc_accounts, oidc_flow, oidc_token
from terminal_server.login import oidc_provider as oidc_provider_mod
from terminal_server.login.oidc_accounts import ensure_account
from terminal_server.login.oidc_config import NameMap, OidcSettings, parse_name_map
from terminal_server.login.oidc_errors import OidcError
from terminal_server.login.oidc_flow import OidcFlow, OidcUser
from terminal_server.login.oidc_pending import MAX_PENDING, PendingLogins, pkce_challenge
from terminal_server.login.oidc_provider import ProviderCache
from tests.oidc_support import CLIENT_ID, CLIENT_SECRET, Provider, oidc_provider, sign_in
from tests.support import free_port

REDIRECT = "http://127.0.0.1:9/login/oidc/callback"  # never visited: the test reads it
BROWSER = "the-browser-cookie"


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture
def provider(port: int, tmp_path: Path) -> Iterator[Provider]:
    with oidc_provider(port, REDIRECT, tmp_path) as p:
        yield p


def make_flow(issuer: str, **kw: object) -> OidcFlow:
    settings = OidcSettings(
        issuer=issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        scopes=("openid", "profile", "groups"),
        name_map=kw.pop("name_map", NameMap()),  # type: ignore[arg-type]
    )  # fmt: skip
    return OidcFlow(settings, REDIRECT, min_uid=1000, **kw)  # type: ignore[arg-type]


def answer(flow: OidcFlow, login: str, next_path: str = "/") -> dict[str, str]:
    """Sign in as `login` and return the query the provider sends the browser back with."""
    url = asyncio.run(flow.begin(next_path, BROWSER))
    with httpx.Client(timeout=20) as client:
        back = sign_in(client, url, login, REDIRECT)
    return dict(parse_qsl(urlsplit(back).query))


def complete(flow: OidcFlow, args: dict[str, str], browser: str | None = BROWSER) -> OidcUser:
    return asyncio.run(flow.complete(args, browser))


def reason(flow: OidcFlow, args: dict[str, str], browser: str | None = BROWSER) -> str:
    with pytest.raises(OidcError) as caught:
        complete(flow, args, browser)
    return caught.value.reason


def test_a_user_signs_in_with_pkce_state_and_nonce(provider: Provider) -> None:
    flow = make_flow(provider.issuer)
    url = asyncio.run(flow.begin("/?session=abc", BROWSER))
    query = dict(parse_qsl(urlsplit(url).query))
    assert query["code_challenge_method"] == "S256"
    pending = flow.pending._pending[query["state"]]
    assert query["code_challenge"] == pkce_challenge(pending.verifier)
    assert query["nonce"] == pending.nonce and query["redirect_uri"] == REDIRECT
    with httpx.Client(timeout=20) as client:
        back = dict(parse_qsl(urlsplit(sign_in(client, url, "alice", REDIRECT)).query))
    user = complete(flow, back)
    assert user == OidcUser("alice", ("team", "gpu"), "/?session=abc")
    # The same answer again (a replayed state, a code used twice) is refused.
    assert reason(flow, back) == "state"


def test_the_answer_must_come_back_to_the_browser_that_began(provider: Provider) -> None:
    flow = make_flow(provider.issuer)
    assert reason(flow, answer(flow, "alice"), browser="someone-else") == "state"
    assert reason(flow, answer(flow, "alice"), browser=None) == "state"


def test_the_provider_must_bind_the_code_to_the_pkce_verifier(provider: Provider) -> None:
    flow = make_flow(provider.issuer)
    args = answer(flow, "alice")
    pending = flow.pending._pending[args["state"]]
    # Another verifier for this state: the provider refuses the code (invalid_grant).
    object.__setattr__(pending, "verifier", "x" * 43)
    assert reason(flow, args) == "exchange"


@pytest.mark.parametrize(
    ("misbehave", "why"),
    [("aud", "audience"), ("multi-aud", "audience"), ("azp", "audience"), ("iss", "issuer"),
     ("nonce", "nonce"), ("expired", "expired"),
     ("foreign-key", "signature")],
)  # fmt: skip
def test_a_token_that_is_not_right_is_refused(
    port: int, tmp_path: Path, misbehave: str, why: str
) -> None:
    with oidc_provider(port, REDIRECT, tmp_path, misbehave=misbehave) as p:
        flow = make_flow(p.issuer)
        assert reason(flow, answer(flow, "alice")) == why


def test_a_token_signed_with_the_client_secret_is_refused(port: int, tmp_path: Path) -> None:
    """HS256 keyed with a secret both sides hold: a client must not take it from a provider
    whose keys are public (and must not verify it with a public key as the HMAC key)."""
    with oidc_provider(port, REDIRECT, tmp_path, alg="HS256") as p:
        flow = make_flow(p.issuer)
        assert reason(flow, answer(flow, "alice")) == "algorithm"


def test_es256_tokens_are_taken(port: int, tmp_path: Path) -> None:
    with oidc_provider(port, REDIRECT, tmp_path, alg="ES256") as p:
        flow = make_flow(p.issuer)
        assert complete(flow, answer(flow, "alice")).name == "alice"


def test_a_rotated_key_is_fetched_once_the_token_names_it(port: int, tmp_path: Path) -> None:
    now = [0.0]
    with oidc_provider(port, REDIRECT, tmp_path) as p:
        flow = make_flow(p.issuer)
        flow.provider = ProviderCache(p.issuer, clock=lambda: now[0])
        assert complete(flow, answer(flow, "alice")).name == "alice"
    now[0] += 31  # past REFRESH_S: an unknown key id may fetch the keys again
    with oidc_provider(port, REDIRECT, tmp_path) as p:  # a fresh key and key id
        assert complete(flow, answer(flow, "alice")).name == "alice"
    # Within REFRESH_S of that fetch, another unknown key id is not fetched again.
    with oidc_provider(port, REDIRECT, tmp_path) as p:
        assert reason(flow, answer(flow, "alice")) == "signature"


def test_allowed_groups_and_users(provider: Provider) -> None:
    flow = make_flow(provider.issuer, allowed_groups={"gpu"}, allowed_users={"mallory"})
    assert complete(flow, answer(flow, "alice")).name == "alice"  # in gpu
    assert complete(flow, answer(flow, "mallory")).name == "mallory"  # named
    flow = make_flow(provider.issuer, allowed_groups={"gpu"})
    assert reason(flow, answer(flow, "mallory")) == "group"


@pytest.mark.parametrize(
    ("login", "why"), [("rooty", "account"), ("daemony", "account"), ("weird", "user")]
)
def test_root_system_accounts_and_unsafe_names_are_refused(
    provider: Provider, login: str, why: str
) -> None:
    flow = make_flow(provider.issuer)
    assert reason(flow, answer(flow, login)) == why


def test_the_name_map(provider: Provider) -> None:
    # bob's preferred_username is Bob@Example.org
    flow = make_flow(provider.issuer)
    assert reason(flow, answer(flow, "bob")) == "user"  # "@" is no Unix name
    flow = make_flow(provider.issuer, name_map=parse_name_map("lowercase,strip-domain=example.org"))
    assert complete(flow, answer(flow, "bob")).name == "bob"
    keep_case = parse_name_map("strip-domain=example.org,prefix=sso_")
    flow = make_flow(provider.issuer, name_map=keep_case)
    assert reason(flow, answer(flow, "bob")) == "user"  # "sso_Bob": not lowercased
    flow = make_flow(
        provider.issuer, name_map=parse_name_map("lowercase,strip-domain=other.org,prefix=sso_")
    )
    assert reason(flow, answer(flow, "bob")) == "user"  # another domain keeps its "@"


def test_an_error_from_the_provider_is_one_reason(provider: Provider) -> None:
    flow = make_flow(provider.issuer)
    args = answer(flow, "alice")
    args = {"state": args["state"], "error": "access_denied\x1b[2J"}
    with pytest.raises(OidcError) as caught:
        complete(flow, args)
    assert caught.value.reason == "provider" and "\x1b" not in str(caught.value)


def _unsigned(claims: dict[str, object], alg: str) -> str:
    def b64(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}."


@pytest.mark.parametrize("alg", ["none", "HS256", "RS1", ""])
def test_unsafe_algorithms_are_refused_before_any_key(alg: str) -> None:
    with pytest.raises(OidcError) as caught:
        oidc_token.header(_unsigned({"sub": "x"}, alg))
    assert caught.value.reason == "algorithm"


def test_pending_logins_are_bounded_and_expire() -> None:
    now = [0.0]
    pending = PendingLogins(clock=lambda: now[0])
    first = pending.begin("/", BROWSER)
    for _ in range(MAX_PENDING + 5):
        pending.begin("/", BROWSER)
    assert len(pending) == MAX_PENDING
    with pytest.raises(OidcError):
        pending.finish(first.state, BROWSER)  # the oldest was dropped
    late = pending.begin("/", BROWSER)
    now[0] += 601
    with pytest.raises(OidcError):
        pending.finish(late.state, BROWSER)
    assert len(pending) == 0


def test_accounts_are_made_only_when_allowed_and_never_for_a_system_name() -> None:
    """On the host: nothing here may reach useradd (that is test_terminal_oidc.py's, in a
    throwaway /etc)."""
    settings = OidcSettings(issuer="https://sso.example.org", client_id="c", client_secret="s",
                            create_accounts=False)  # fmt: skip
    for name, detail in (("nosuchuser-oidc-test", "no Unix account"), ("daemon", "system")):
        with pytest.raises(OidcError, match=detail) as caught:
            ensure_account(name, settings, min_uid=1000)
        assert caught.value.reason == "account"


def test_the_discovery_document_must_name_the_issuer_asked_for(provider: Provider) -> None:
    flow = make_flow(provider.issuer.replace("127.0.0.1", "localhost"))
    with pytest.raises(OidcError) as caught:
        asyncio.run(flow.begin("/", BROWSER))
    assert caught.value.reason == "discovery" and "another issuer" in caught.value.detail


@pytest.mark.parametrize("fault", ["silent", "huge"])
def test_a_stalled_or_flooding_provider_is_cut_off_without_blocking_the_loop(
    fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: a provider that never answers, or sends a discovery document past
    the bound. The login fails in bounded time and the event loop keeps running meanwhile."""
    monkeypatch.setattr(oidc_provider_mod, "TIMEOUT_S", 1.0)

    done = asyncio.Event()
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.readuntil(b"\r\n\r\n")
            if fault == "huge":
                body = b'{"issuer": "' + b"x" * (2 * oidc_provider_mod.BODY_LIMIT) + b'"}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)  # fmt: skip
                await writer.drain()
            await done.wait()
        except ConnectionError:
            pass  # the client hung up: what it should do
        finally:
            writer.close()

    async def main() -> tuple[str, float, int]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        flow = make_flow(f"http://127.0.0.1:{port}")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        started = asyncio.get_running_loop().time()
        try:
            await flow.begin("/", BROWSER)
        except OidcError as exc:
            reason = f"{exc.reason}: {exc.detail}"
        finally:
            task.cancel()
            done.set()
            server.close()
            await asyncio.gather(*handlers)
        return reason, asyncio.get_running_loop().time() - started, ticks

    reason, took, ticks = asyncio.run(main())
    assert reason.startswith("discovery: ") and took < 5
    if fault == "silent":
        assert "HTTPTimeoutError" in reason and ticks >= 5  # the loop ran while it waited
    else:  # cut off at the bound, long before the deadline
        assert "HTTPStreamClosedError" in reason and took < 0.9


def test_without_root_it_says_so_once_and_makes_no_account(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(oidc_accounts.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(oidc_flow.os, "geteuid", lambda: 1000)
    with caplog.at_level(logging.WARNING, "mixvllm.terminal"):
        make_flow("https://sso.example.org")
    assert [r.getMessage() for r in caplog.records] == [
        "--auth oidc without root: only users who already have a Unix account here may log "
        "in (no account is made), and sessions run as the server's user"
    ]
    settings = OidcSettings(issuer="https://sso.example.org", client_id="c", client_secret="s")
    assert settings.create_accounts
    with pytest.raises(OidcError, match="no Unix account"):
        ensure_account("nosuchuser-oidc-test", settings, min_uid=1000)
