"""The BFF's sign-in, session and sign-out rules, through the real app against a real
authorization server: cookie flags, state/nonce/PKCE bound to the pre-login cookie, a new
session id at sign-in, redirects after sign-in, logout then replay of the old cookie."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest

from bastion.bff.cookies import CookiePolicy
from bastion.bff.sessions import SessionStore
from bastion.storage.protocols import FastState

from .harness import GOODBYE
from .harness import ORIGIN
from .harness import AuthServer
from .harness import Browser
from .harness import bff_settings
from .harness import serve_bff
from .harness import sign_in_at_server

pytestmark = pytest.mark.anyio

SESSION = "__Host-bastion-bff"
LOGIN = "__Host-bastion-bff-login"


def _flags(set_cookie: str) -> tuple[str, set[str]]:
    name = set_cookie.split("=", 1)[0]
    attributes = {part.strip().split("=")[0].lower() for part in set_cookie.split(";")[1:]}
    return name, attributes


async def _tokens_of(state: FastState, browser: Browser) -> list[str]:
    store = SessionStore(state, idle=60, absolute=60, login_ttl=60, clock=lambda: 0.0)
    tokens = await store.load_tokens(browser.cookies[SESSION])
    assert tokens is not None
    return [t for t in (tokens.access_token, tokens.refresh_token, tokens.id_token) if t]


def assert_no_token_leaked(browser: Browser, tokens: list[str]) -> None:
    """No token in any response body the BFF sent, nor in any cookie it set."""
    for token in tokens:
        assert len(token) > 20
        for body in browser.bodies:
            assert token.encode() not in body
        for cookie in browser.set_cookies:
            assert token not in cookie


async def test_cookies_are_host_prefixed_secure_httponly_lax(server: AuthServer, state: FastState) -> None:
    async with serve_bff(bff_settings(server.issuer), state, server.client_secret) as (browser, _):
        status, headers = await browser.sign_in()
        assert status == 303
        assert headers["location"] == "/"
    names = [_flags(c) for c in browser.set_cookies]
    login_set, session_set, login_cleared = names
    assert login_set[0] == LOGIN
    assert session_set[0] == SESSION
    assert login_cleared[0] == LOGIN
    for _, attributes in names:
        assert {"path", "httponly", "samesite", "secure", "max-age"} <= attributes
        assert "domain" not in attributes
    for cookie in browser.set_cookies:
        assert "SameSite=Lax" in cookie
        assert "Path=/;" in cookie
    assert list(browser.cookies) == [SESSION]


async def test_plain_http_loopback_drops_prefix_and_secure_with_a_warning(
    server: AuthServer, state: FastState, caplog: pytest.LogCaptureFixture
) -> None:
    settings = bff_settings(server.issuer, redirect_uri="http://127.0.0.1:8300/bff/callback")
    with caplog.at_level(logging.WARNING, logger="bastion.bff"):
        async with serve_bff(settings, state, server.client_secret) as (browser, _):
            status, _, _ = await browser.request("GET", "/bff/login")
    assert status == 303
    (cookie,) = browser.set_cookies
    name, attributes = _flags(cookie)
    assert name == "bastion-bff-login"
    assert "secure" not in attributes
    assert "httponly" in attributes
    assert any("plain http on loopback" in r.getMessage() for r in caplog.records)


def test_plain_http_elsewhere_is_refused() -> None:
    with pytest.raises(ValueError, match="https"):
        CookiePolicy.for_origin("http://shop.example/bff/callback")
    assert CookiePolicy.for_origin("http://localhost:8300/bff/callback").secure is False
    assert CookiePolicy.for_origin("https://shop.example/bff/callback").secure is True


async def test_login_uses_pkce_s256_state_and_nonce(server: AuthServer, state: FastState) -> None:
    async with serve_bff(bff_settings(server.issuer), state, server.client_secret) as (browser, _):
        _, headers, _ = await browser.request("GET", "/bff/login")
    query = {k: v[0] for k, v in parse_qs(urlsplit(headers["location"]).query).items()}
    assert headers["location"].startswith(f"{server.issuer}/authorize?")
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 43
    assert len(query["nonce"]) >= 43
    assert query["client_id"] == "bff"
    assert query["redirect_uri"] == f"{ORIGIN}/bff/callback"


async def test_me_gives_claims_and_csrf_never_a_token(server: AuthServer, any_state: FastState) -> None:
    state = any_state
    async with serve_bff(bff_settings(server.issuer), state, server.client_secret) as (browser, _):
        await browser.sign_in()
        status, headers, body = await browser.request("GET", "/bff/me")
        tokens = await _tokens_of(state, browser)
    assert status == 200
    assert headers["cache-control"] == "no-store"
    document = json.loads(body)
    assert set(document) == {"claims", "csrf_token"}
    assert document["claims"]["name"] == "Alice"
    assert document["claims"]["email"] == "alice@example.com"
    assert document["claims"]["iss"] == server.issuer
    assert "nonce" not in document["claims"]
    assert_no_token_leaked(browser, tokens)


async def test_a_new_session_id_at_every_sign_in(server: AuthServer, state: FastState) -> None:
    async with serve_bff(bff_settings(server.issuer), state, server.client_secret) as (browser, _):
        await browser.sign_in()
        first = browser.cookies[SESSION]
        await browser.sign_in()
        second = browser.cookies[SESSION]
        assert second != first
        status, _, _ = await browser.request("GET", "/bff/me")
        assert status == 200
        # The session the browser had before signing in again is gone.
        browser.cookies[SESSION] = first
        status, _, _ = await browser.request("GET", "/bff/me")
        assert status == 401


async def test_a_planted_session_cookie_does_not_survive_sign_in(
    server: AuthServer, state: FastState
) -> None:
    """Session fixation: an attacker's chosen cookie value never becomes the signed-in id."""
    async with serve_bff(bff_settings(server.issuer), state, server.client_secret) as (browser, _):
        browser.cookies[SESSION] = "planted-by-attacker"
        await browser.sign_in()
        assert browser.cookies[SESSION] != "planted-by-attacker"
        browser.cookies[SESSION] = "planted-by-attacker"
        status, _, _ = await browser.request("GET", "/bff/me")
        assert status == 401


async def test_callback_needs_the_pre_login_cookie_of_the_same_browser(
    server: AuthServer, state: FastState
) -> None:
    async with serve_bff(bff_settings(server.issuer), state, server.client_secret) as (victim, _):
        attacker = Browser(victim.base, victim.http)
        # The attacker starts a sign-in and gets a code for their own account...
        _, headers, _ = await attacker.request("GET", "/bff/login")
        callback = sign_in_at_server(headers["location"])
        query = urlsplit(callback).query
        # ... and makes the victim's browser deliver it (login CSRF): no pre-login cookie.
        status, _, body = await victim.request("GET", f"/bff/callback?{query}")
        assert status == 400
        assert json.loads(body)["status"] == 400
        assert "bastion-bff" not in "".join(victim.cookies)
        # With a pre-login cookie of its own, the state does not match.
        await victim.request("GET", "/bff/login")
        status, _, _ = await victim.request("GET", f"/bff/callback?{query}")
        assert status == 400
        assert SESSION not in victim.cookies
        # The attacker's own callback still works once, and never again.
        status, _, _ = await attacker.request("GET", f"/bff/callback?{query}")
        assert status == 303
        attacker.cookies[LOGIN] = "x"
        status, _, _ = await attacker.request("GET", f"/bff/callback?{query}")
        assert status == 400


async def test_return_to_survives_sign_in_and_tricks_are_refused(
    server: AuthServer, state: FastState
) -> None:
    async with serve_bff(bff_settings(server.issuer), state, server.client_secret) as (browser, _):
        status, headers = await browser.sign_in("/orders/42%3Ftab%3Ditems")
        assert status == 303
        assert headers["location"] == "/orders/42?tab=items"
        for trick in (
            "//evil.example",
            "/%5Cevil.example",
            "/%2509/evil",
            "https:evil.example",
            "javascript:alert(1)",
        ):
            status, headers, _ = await browser.request("GET", f"/bff/login?return_to={trick}")
            assert status == 400, trick
            assert headers["content-type"] == "application/problem+json"
            assert "location" not in headers


async def test_logout_revokes_deletes_and_the_old_cookie_replays_to_nothing(
    server: AuthServer, state: FastState
) -> None:
    async with serve_bff(bff_settings(server.issuer), state, server.client_secret) as (browser, _):
        await browser.sign_in()
        tokens = await _tokens_of(state, browser)
        old = browser.cookies[SESSION]
        _, _, body = await browser.request("GET", "/bff/me")
        csrf = json.loads(body)["csrf_token"]
        status, _, body = await browser.request(
            "POST", "/bff/logout", headers={"origin": ORIGIN, "x-csrf-token": csrf}
        )
        assert status == 200
        logout_url = json.loads(body)["logout_url"]
        assert logout_url.startswith(f"{server.issuer}/logout?")
        assert parse_qs(urlsplit(logout_url).query) == {
            "client_id": ["bff"],
            "post_logout_redirect_uri": [GOODBYE],
        }
        assert SESSION not in browser.cookies
        assert len(server.named("refresh_token.revoked")) == 1
        browser.cookies[SESSION] = old
        for method, path in (("GET", "/bff/me"), ("GET", "/bff/api/orders")):
            status, _, _ = await browser.request(method, path)
            assert status == 401, path
        status, _, _ = await browser.request(
            "POST", "/bff/logout", headers={"origin": ORIGIN, "x-csrf-token": csrf}
        )
        assert status == 401
    assert_no_token_leaked(browser, tokens)


async def test_idle_and_absolute_lifetimes(server: AuthServer, state: FastState) -> None:
    from .harness import Clock

    clock = Clock()
    settings = bff_settings(server.issuer, idle_timeout=120, absolute_timeout=250)
    async with serve_bff(settings, state, server.client_secret, clock) as (browser, _):
        status, _ = await browser.sign_in()
        assert status == 303
        for _ in range(2):  # used every 100 s: the idle timer restarts each time
            clock.offset += 100
            status, _, _ = await browser.request("GET", "/bff/me")
            assert status == 200
        clock.offset += 60  # 260 s since sign-in, 60 s idle: past the absolute end only
        status, _, _ = await browser.request("GET", "/bff/me")
        assert status == 401
        await browser.sign_in()
        clock.offset += 121  # idle too long
        status, _, _ = await browser.request("GET", "/bff/me")
        assert status == 401


async def test_a_callback_with_another_state_is_refused(server: AuthServer, state: FastState) -> None:
    """RFC 6749 §10.12: even this browser's own code is refused when ``state`` is not the one
    bound to its pre-login cookie."""
    async with serve_bff(bff_settings(server.issuer), state, server.client_secret) as (browser, _):
        _, headers, _ = await browser.request("GET", "/bff/login")
        callback = sign_in_at_server(headers["location"])
        query = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
        query["state"] += "x"
        status, _, body = await browser.request("GET", "/bff/callback", params=query)
        assert status == 400
        assert "does not belong to this browser" in json.loads(body)["detail"]
        assert SESSION not in browser.cookies
        assert LOGIN not in browser.cookies  # cleared: its record was consumed
        assert browser.set_cookies[-1].startswith(f"{LOGIN}=; ")


async def test_a_session_store_that_fails_mid_run_is_a_503_not_a_500(
    server: AuthServer, tmp_path: Path
) -> None:
    """Redis goes away under a signed-in browser: the BFF says it cannot serve now, and a retry
    once it is back reaches a store that lost the session (sign in again), never a 500."""
    from bastion.storage.fast.redis import RedisState
    from tests.private_redis import PrivateRedis

    redis = PrivateRedis(tmp_path)
    state = RedisState(redis.url)
    try:
        async with serve_bff(bff_settings(server.issuer), state, server.client_secret) as (browser, _):
            await browser.sign_in()
            redis.kill()
            for path in ("/bff/me", "/bff/login"):
                status, headers, body = await browser.request("GET", path)
                assert status == 503, (path, body)
                assert headers["retry-after"] == "5"
                assert headers["cache-control"] == "no-store"
                assert headers["content-type"] == "application/problem+json"
                assert json.loads(body)["status"] == 503
            redis.start()
            status, _, _ = await browser.request("GET", "/bff/me")
            assert status == 401  # the restarted store kept nothing: the session is gone
    finally:
        await state.close()
        redis.kill()
