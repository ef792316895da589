"""Revocation (RFC 7009) and introspection (RFC 7662) of the tokens of a sign-in, through the
whole ASGI app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.test_as_harness import CONF_REDIRECT
from tests.conformance.test_as_harness import ClockedHarness
from tests.conformance.test_as_harness import make_clocked_harness
from tests.conformance.test_as_harness import obtain_code
from tests.conformance.test_as_token import basic
from tests.conformance.test_as_token import introspect
from tests.conformance.test_as_token import resource_server
from tests.people.test_endpoints import ISSUER
from tests.people.test_endpoints import authorize_url
from tests.people.test_endpoints import exchange


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ClockedHarness]:
    yield from make_clocked_harness(tmp_path)


def conf_tokens(harness: ClockedHarness) -> tuple[dict[str, str], dict[str, Any]]:
    """The confidential client's Basic header and the tokens of one sign-in through it."""
    _, secret = harness.confidential_client()
    auth = basic("conf", secret)
    code = obtain_code(
        harness, authorize_url(client_id="conf", redirect_uri=CONF_REDIRECT, scope="openid orders:read")
    )
    response = harness.client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CONF_REDIRECT,
            "code_verifier": "verifier-" + "x" * 50,
        },
        headers=auth,
    )
    assert response.status_code == 200, response.text
    return auth, response.json()


def test_revoking_a_refresh_token_revokes_its_access_tokens(harness: ClockedHarness) -> None:
    api = resource_server(harness)
    tokens = exchange(harness, obtain_code(harness))
    refreshed = harness.client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "web"},
    ).json()
    response = harness.client.post("/revoke", data={"token": refreshed["refresh_token"], "client_id": "web"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    for access in (tokens["access_token"], refreshed["access_token"]):
        assert introspect(harness, access, api) == {"active": False}


def test_revocation_searches_past_a_wrong_hint(harness: ClockedHarness) -> None:
    # RFC 7009 §2.1: "If the server is unable to locate the token using the given hint, it MUST
    # extend its search across all of its supported token types."
    api = resource_server(harness)
    tokens = exchange(harness, obtain_code(harness))
    response = harness.client.post(
        "/revoke",
        data={"token": tokens["refresh_token"], "token_type_hint": "access_token", "client_id": "web"},
    )
    assert response.status_code == 200
    assert introspect(harness, tokens["access_token"], api) == {"active": False}
    tokens = exchange(harness, obtain_code(harness))
    response = harness.client.post(
        "/revoke",
        data={"token": tokens["access_token"], "token_type_hint": "refresh_token", "client_id": "web"},
    )
    assert response.status_code == 200
    assert introspect(harness, tokens["access_token"], api) == {"active": False}


def test_unknown_tokens_revoke_with_200(harness: ClockedHarness) -> None:
    for token in ("nope", "a.b.c", "x" * 3000, "é"):
        response = harness.client.post("/revoke", data={"token": token, "client_id": "web"})
        assert response.status_code == 200, token


def test_another_clients_tokens_are_not_revoked(harness: ClockedHarness) -> None:
    # RFC 7009 §2.1: the server "verifies whether the token was issued to the client making the
    # revocation request. If this validation fails, the request is refused and the client is
    # informed of the error".
    auth, tokens = conf_tokens(harness)
    for token in (tokens["access_token"], tokens["refresh_token"]):
        response = harness.client.post("/revoke", data={"token": token, "client_id": "web"})
        assert response.status_code == 400, token
        assert response.json()["error"] == "unauthorized_client"
    assert introspect(harness, tokens["access_token"], auth)["active"] is True
    assert introspect(harness, tokens["refresh_token"], auth)["active"] is True


def test_refresh_token_introspection_for_its_client(harness: ClockedHarness) -> None:
    auth, tokens = conf_tokens(harness)
    for hint in ({}, {"token_type_hint": "refresh_token"}, {"token_type_hint": "access_token"}):
        info = introspect(harness, tokens["refresh_token"], auth, **hint)
        assert info["active"] is True
        assert info["client_id"] == "conf"
        assert info["iss"] == ISSUER
        assert info["scope"] == "openid orders:read"
        assert isinstance(info["exp"], int)
        assert info["sub"]
    # Another confidential client learns nothing about it.
    api = resource_server(harness)
    assert introspect(harness, tokens["refresh_token"], api) == {"active": False}
    # A rotated refresh token is no longer active.
    response = harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, headers=auth
    )
    assert response.status_code == 200
    assert introspect(harness, tokens["refresh_token"], auth) == {"active": False}
    assert introspect(harness, response.json()["refresh_token"], auth)["active"] is True


def test_access_token_introspection_shape(harness: ClockedHarness) -> None:
    api = resource_server(harness)
    tokens = exchange(harness, obtain_code(harness))
    info = introspect(harness, tokens["access_token"], api)
    assert info["active"] is True
    assert info["client_id"] == "web"
    assert info["iss"] == ISSUER
    assert info["token_type"] == "Bearer"
    assert set(info["scope"].split()) == {"openid", "profile", "email", "orders:read", "offline_access"}
    harness.tick(harness.services.settings.access_token_ttl + 120)
    assert introspect(harness, tokens["access_token"], api) == {"active": False}


def test_introspection_needs_an_authenticated_client(harness: ClockedHarness) -> None:
    tokens = exchange(harness, obtain_code(harness))
    attempts: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"token": tokens["access_token"]}, {}),
        ({"token": tokens["access_token"], "client_id": "web"}, {}),  # public: no credentials
        ({"token": tokens["access_token"]}, basic("api", "wrong")),
    ]
    for data, headers in attempts:
        response = harness.client.post("/introspect", data=data, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
        assert response.headers["www-authenticate"].startswith("Basic")
