"""CSRF rules (the session's X-CSRF-Token and an allowed Origin on unsafe methods, no CORS) and
the API proxy (the session's access token to the gateway; cookies never forwarded)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bastion.bff.sessions import SessionStore
from bastion.storage.protocols import FastState

from .harness import ORIGIN
from .harness import AuthServer
from .harness import Browser
from .harness import bff_settings
from .harness import recording_upstream
from .harness import serve_bff
from .test_signin import SESSION
from .test_signin import assert_no_token_leaked

pytestmark = pytest.mark.anyio


@pytest.fixture
async def signed_in(
    server: AuthServer, state: FastState
) -> AsyncIterator[tuple[Browser, str, list[dict[str, Any]], FastState]]:
    """A signed-in browser, its CSRF token, and what the gateway's place received."""
    with recording_upstream() as (gateway, seen):
        settings = bff_settings(server.issuer, gateway, allowed_origins=("https://admin.shop.example",))
        async with serve_bff(settings, state, server.client_secret) as (browser, _):
            await browser.sign_in()
            _, _, body = await browser.request("GET", "/bff/me")
            yield browser, json.loads(body)["csrf_token"], seen, state


async def _access_token(state: FastState, browser: Browser) -> str:
    store = SessionStore(state, idle=60, absolute=60, login_ttl=60, clock=lambda: 0.0)
    tokens = await store.load_tokens(browser.cookies[SESSION])
    assert tokens is not None
    return tokens.access_token


async def test_unsafe_methods_need_the_csrf_token_and_an_allowed_origin(
    signed_in: tuple[Browser, str, list[dict[str, Any]], FastState],
) -> None:
    browser, csrf, seen, _ = signed_in
    refused = [
        {"origin": ORIGIN},  # no token
        {"origin": ORIGIN, "x-csrf-token": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")},  # wrong token
        {"origin": "https://evil.example", "x-csrf-token": csrf},  # foreign origin
        {"origin": "null", "x-csrf-token": csrf},
        {"x-csrf-token": csrf},  # no origin
    ]
    for headers in refused:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            status, response_headers, body = await browser.request(
                method, "/bff/api/orders", headers=headers, data=b"{}"
            )
            assert status == 403, (method, headers)
            assert response_headers["content-type"] == "application/problem+json"
            assert json.loads(body)["status"] == 403
    assert seen == []
    status, _, _ = await browser.request(
        "POST", "/bff/api/orders", headers={"origin": ORIGIN, "x-csrf-token": csrf}
    )
    assert status == 200
    status, _, _ = await browser.request(
        "DELETE", "/bff/api/orders/1", headers={"origin": "https://admin.shop.example", "x-csrf-token": csrf}
    )
    assert status == 200
    assert [entry["method"] for entry in seen] == ["POST", "DELETE"]
    # Safe methods need neither.
    status, _, _ = await browser.request("GET", "/bff/api/orders")
    assert status == 200


async def test_logout_needs_the_csrf_token(
    signed_in: tuple[Browser, str, list[dict[str, Any]], FastState],
) -> None:
    browser, csrf, _, _ = signed_in
    status, _, _ = await browser.request("POST", "/bff/logout", headers={"origin": ORIGIN})
    assert status == 403
    status, _, _ = await browser.request(
        "POST", "/bff/logout", headers={"origin": "https://evil.example", "x-csrf-token": csrf}
    )
    assert status == 403
    status, _, _ = await browser.request("GET", "/bff/me")
    assert status == 200


async def test_no_cors_for_foreign_origins(
    signed_in: tuple[Browser, str, list[dict[str, Any]], FastState],
) -> None:
    browser, _, _, _ = signed_in
    status, headers, _ = await browser.request(
        "OPTIONS",
        "/bff/api/orders",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert status == 405
    assert not any(name.startswith("access-control-") for name in headers)
    for path in ("/bff/me", "/bff/api/orders"):
        _, headers, _ = await browser.request("GET", path, headers={"origin": "https://evil.example"})
        assert not any(name.startswith("access-control-") for name in headers)


async def test_the_gateway_gets_the_access_token_and_never_the_cookies(
    signed_in: tuple[Browser, str, list[dict[str, Any]], FastState],
) -> None:
    browser, csrf, seen, state = signed_in
    access_token = await _access_token(state, browser)
    status, headers, body = await browser.request(
        "PUT",
        "/bff/api/orders/7/items?sku=a%20b&n=2",
        headers={
            "origin": ORIGIN,
            "x-csrf-token": csrf,
            "content-type": "application/json",
            "authorization": "Bearer forged-by-the-page",
            "x-request-id": "r-1",
        },
        data=b'{"qty": 2}',
    )
    assert status == 200
    assert json.loads(body) == {"ok": True, "target": "/orders/7/items?sku=a%20b&n=2"}
    assert "set-cookie" not in headers  # the API's cookies are not the browser's business
    (entry,) = seen
    sent = dict(entry["headers"])
    assert entry["method"] == "PUT"
    assert entry["target"] == "/orders/7/items?sku=a%20b&n=2"
    assert entry["body"] == '{"qty": 2}'
    assert [v for k, v in entry["headers"] if k == "authorization"] == [f"Bearer {access_token}"]
    assert "cookie" not in sent
    assert "x-csrf-token" not in sent
    assert sent["x-request-id"] == "r-1"
    assert browser.cookies[SESSION] not in json.dumps(entry)
    assert_no_token_leaked(browser, [access_token])


async def test_the_api_without_a_session_is_401(server: AuthServer, state: FastState) -> None:
    with recording_upstream() as (gateway, seen):
        async with serve_bff(bff_settings(server.issuer, gateway), state, server.client_secret) as (
            browser,
            _,
        ):
            status, headers, body = await browser.request("GET", "/bff/api/orders")
    assert status == 401
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 401
    assert seen == []
