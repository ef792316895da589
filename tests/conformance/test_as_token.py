"""The token endpoint against RFC 6749 §4.1.3, §5, §6, RFC 7636 §4.6 and RFC 9700 §4.14:
authorization codes, client authentication, refresh rotation, through the whole ASGI app."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from bastion.services.users import set_disabled
from tests.conformance.test_as_harness import CONF_REDIRECT
from tests.conformance.test_as_harness import ClockedHarness
from tests.conformance.test_as_harness import make_clocked_harness
from tests.conformance.test_as_harness import obtain_code
from tests.people.flows import VERIFIER
from tests.people.test_endpoints import authorize_url
from tests.people.test_endpoints import exchange


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ClockedHarness]:
    yield from make_clocked_harness(
        tmp_path, refresh_token_idle_ttl=100, refresh_token_absolute_ttl=300, insecure_refresh_reuse_window=5
    )


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"authorization": "Basic " + base64.b64encode(raw).decode()}


def resource_server(harness: ClockedHarness) -> dict[str, str]:
    """A confidential client that introspects (an API); returns its Basic header."""
    _, secret = harness.run(
        harness.services.clients.create, name="API", grant_types=["client_credentials"], client_id="api"
    )
    assert secret is not None
    return basic("api", secret)


def introspect(harness: ClockedHarness, token: str, auth: dict[str, str], **extra: str) -> dict[str, Any]:
    response = harness.client.post("/introspect", data={"token": token, **extra}, headers=auth)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body: dict[str, Any] = response.json()
    return body


def token_request(harness: ClockedHarness, data: dict[str, str], **kwargs: Any) -> httpx.Response:
    response = harness.client.post("/token", data=data, **kwargs)
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    return response


def code_params(code: str, **overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "https://app.example/cb",
        "code_verifier": VERIFIER,
        "client_id": "web",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def refresh(harness: ClockedHarness, token: str, client_id: str = "web", **extra: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id, **extra}
    return token_request(harness, data)


def assert_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


# -- authorization_code (RFC 6749 §4.1.3) ----------------------------------------------------------


def test_successful_response_shape(harness: ClockedHarness) -> None:
    response = token_request(harness, code_params(obtain_code(harness)))
    assert response.status_code == 200
    body = response.json()
    # RFC 6749 §5.1; OAuth 2.1 / RFC 6750: the type is "Bearer".
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == harness.services.settings.access_token_ttl
    assert {"access_token", "refresh_token", "id_token", "scope"} <= body.keys()


def test_code_reuse_is_invalid_grant_and_revokes_what_the_first_use_issued(harness: ClockedHarness) -> None:
    auth = resource_server(harness)
    code = obtain_code(harness)
    first = token_request(harness, code_params(code)).json()
    assert introspect(harness, first["access_token"], auth)["active"] is True
    harness.tick(5)
    assert_error(token_request(harness, code_params(code)), 400, "invalid_grant")
    # RFC 6749 §4.1.2: the server "SHOULD revoke (when possible) all tokens previously issued
    # based on that authorization code" (RFC 9700 §4.5.3.1 for PKCE code replays too).
    assert introspect(harness, first["access_token"], auth) == {"active": False}
    assert_error(refresh(harness, first["refresh_token"]), 400, "invalid_grant")


def test_code_reuse_by_opaque_token_client_revokes_too(harness: ClockedHarness) -> None:
    from bastion.protocol.models import TokenFormat

    auth = resource_server(harness)
    harness.run(
        harness.services.clients.create,
        name="Partner",
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        scopes=["openid", "orders:read"],
        redirect_uris=["https://partner.example/cb"],
        token_format=TokenFormat.OPAQUE,
        client_id="partner",
    )
    code = obtain_code(
        harness, authorize_url(client_id="partner", redirect_uri="https://partner.example/cb", scope="openid")
    )
    params = code_params(code, client_id="partner", redirect_uri="https://partner.example/cb")
    first = token_request(harness, params).json()
    assert first["access_token"].count(".") == 0
    assert introspect(harness, first["access_token"], auth)["active"] is True
    assert_error(token_request(harness, params), 400, "invalid_grant")
    assert introspect(harness, first["access_token"], auth) == {"active": False}


def test_code_is_bound_to_its_client(harness: ClockedHarness) -> None:
    _, secret = harness.confidential_client(redirect_uris=[CONF_REDIRECT, "https://app.example/cb"])
    code = obtain_code(harness)  # issued to "web"
    stolen = token_request(harness, code_params(code, client_id=None), headers=basic("conf", secret))
    assert_error(stolen, 400, "invalid_grant")
    # Another public client naming itself in client_id gets nowhere either.
    harness.run(
        harness.services.clients.create,
        name="Other",
        public=True,
        grant_types=["authorization_code"],
        scopes=["openid"],
        redirect_uris=["https://app.example/cb"],
        client_id="other",
    )
    code = obtain_code(harness)
    assert_error(token_request(harness, code_params(code, client_id="other")), 400, "invalid_grant")


@pytest.mark.parametrize(
    "redirect_uri",
    [
        None,
        "https://app.example/cb/",
        "https://app.example/cb?x=1",
        "https://APP.example/cb",
        "https://evil.example/cb",
    ],
)
def test_code_is_bound_to_its_redirect_uri(harness: ClockedHarness, redirect_uri: str | None) -> None:
    code = obtain_code(harness)
    assert_error(token_request(harness, code_params(code, redirect_uri=redirect_uri)), 400, "invalid_grant")


@pytest.mark.parametrize(
    "verifier",
    [None, "x" * 43, VERIFIER[:42], VERIFIER + "!", VERIFIER.upper(), "a" * 129, VERIFIER + " "],
)
def test_code_is_bound_to_its_pkce_verifier(harness: ClockedHarness, verifier: str | None) -> None:
    code = obtain_code(harness)
    response = token_request(harness, code_params(code, code_verifier=verifier))
    assert_error(response, 400, "invalid_grant")
    # A failed attempt burns the code (RFC 6749 §4.1.2: used at most once).
    assert_error(token_request(harness, code_params(code)), 400, "invalid_grant")


def test_code_expires_after_60_seconds(harness: ClockedHarness) -> None:
    assert harness.services.settings.code_ttl == 60
    code = obtain_code(harness)
    harness.tick(59)
    assert token_request(harness, code_params(code)).status_code == 200
    code = obtain_code(harness)
    harness.tick(60)
    assert_error(token_request(harness, code_params(code)), 400, "invalid_grant")


def test_unknown_and_malformed_codes(harness: ClockedHarness) -> None:
    for code in ("nope", "x" * 5000, "é", "a\x00b"):
        assert_error(token_request(harness, code_params(code)), 400, "invalid_grant")
    assert_error(token_request(harness, code_params("", client_id="web")), 400, "invalid_request")


def test_public_client_must_identify_itself(harness: ClockedHarness) -> None:
    code = obtain_code(harness)
    response = token_request(harness, code_params(code, client_id=None))
    assert_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic")


def test_confidential_client_must_authenticate(harness: ClockedHarness) -> None:
    _, secret = harness.confidential_client()
    url = authorize_url(client_id="conf", redirect_uri=CONF_REDIRECT, scope="openid orders:read")
    code = obtain_code(harness, url)
    params = code_params(code, client_id="conf", redirect_uri=CONF_REDIRECT)
    for attempt in (
        {"data": params},  # only client_id: "none" is not a confidential client's method
        {"data": params, "headers": basic("conf", secret + "x")},
        {"data": {**params, "client_secret": "wrong"}},
        {"data": params, "headers": basic("conf", "")},
        {"data": params, "headers": {"authorization": "Basic !!!"}},
        {"data": params, "headers": {"authorization": "Basic " + base64.b64encode(b"conf").decode()}},
    ):
        response = token_request(harness, **attempt)
        assert_error(response, 401, "invalid_client")
        # RFC 6749 §5.2: 401 "MUST include the WWW-Authenticate response header field".
        assert response.headers["www-authenticate"].startswith("Basic realm=")
    # Two methods at once are refused (RFC 6749 §2.3).
    both = token_request(harness, {**params, "client_secret": secret}, headers=basic("conf", secret))
    assert both.status_code in (400, 401)
    # The code survived failed client authentication: authentication comes first.
    ok = token_request(
        harness, {k: v for k, v in params.items() if k != "client_id"}, headers=basic("conf", secret)
    )
    assert ok.status_code == 200, ok.text
    code = obtain_code(harness, url)
    post = token_request(
        harness, {**code_params(code, client_id="conf", redirect_uri=CONF_REDIRECT), "client_secret": secret}
    )
    assert post.status_code == 200, post.text


def test_public_client_presenting_a_secret_is_refused(harness: ClockedHarness) -> None:
    code = obtain_code(harness)
    response = token_request(harness, {**code_params(code), "client_secret": "guess"})
    assert_error(response, 401, "invalid_client")


@pytest.mark.parametrize(
    "grant_type",
    ["password", "implicit", "token", "urn:ietf:params:oauth:grant-type:device_code", "AUTHORIZATION_CODE"],
)
def test_unimplemented_grant_types(harness: ClockedHarness, grant_type: str) -> None:
    data = {"grant_type": grant_type, "client_id": "web", "username": "alice", "password": "x"}
    assert_error(token_request(harness, data), 400, "unsupported_grant_type")


def test_token_endpoint_takes_only_a_form_post(harness: ClockedHarness) -> None:
    code = obtain_code(harness)
    assert harness.client.get("/token").status_code == 405
    as_json = harness.client.post("/token", json=code_params(code))
    assert_error(as_json, 400, "invalid_request")
    in_query = harness.client.post("/token?code=" + code, data=code_params(code))
    assert_error(in_query, 400, "invalid_request")


# -- refresh_token (RFC 6749 §6, RFC 9700 §4.14.2) -------------------------------------------------


def _tokens(harness: ClockedHarness) -> dict[str, Any]:
    return exchange(harness, obtain_code(harness))


def test_refresh_rotates_and_reuse_outside_grace_revokes_the_family(harness: ClockedHarness) -> None:
    auth = resource_server(harness)
    first = _tokens(harness)
    harness.tick(1)
    second = refresh(harness, first["refresh_token"]).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["token_type"] == "Bearer"
    # Within the grace window a retry gets the same pair.
    harness.tick(2)
    again = refresh(harness, first["refresh_token"]).json()
    assert again["refresh_token"] == second["refresh_token"]
    assert again["access_token"] == second["access_token"]
    # After it: theft. The whole family and its access tokens die.
    harness.tick(10)
    assert_error(refresh(harness, first["refresh_token"]), 400, "invalid_grant")
    assert_error(refresh(harness, second["refresh_token"]), 400, "invalid_grant")
    for access in (first["access_token"], second["access_token"]):
        assert introspect(harness, access, auth) == {"active": False}
    assert introspect(harness, second["refresh_token"], auth) == {"active": False}
    assert [e for e in harness.events if e.type == "refresh_token.reuse_detected"]


def test_refresh_scope_can_narrow_but_not_widen(harness: ClockedHarness) -> None:
    tokens = exchange(harness, obtain_code(harness, authorize_url(scope="openid orders:read offline_access")))
    assert_error(refresh(harness, tokens["refresh_token"], scope="openid orders:write"), 400, "invalid_scope")
    assert_error(refresh(harness, tokens["refresh_token"], scope="openid profile"), 400, "invalid_scope")
    narrowed = refresh(harness, tokens["refresh_token"], scope="orders:read")
    assert narrowed.status_code == 200, narrowed.text
    body = narrowed.json()
    assert body["scope"] == "orders:read"
    assert "id_token" not in body
    # The new refresh token keeps the whole grant (RFC 6749 §6: "identical" scope).
    wide = refresh(harness, body["refresh_token"], scope="openid orders:read offline_access")
    assert wide.status_code == 200, wide.text


def test_refresh_token_of_another_client_is_invalid_grant(harness: ClockedHarness) -> None:
    _, secret = harness.confidential_client()
    tokens = _tokens(harness)
    stolen = token_request(
        harness,
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=basic("conf", secret),
    )
    assert_error(stolen, 400, "invalid_grant")
    # The owner still holds a working token.
    assert refresh(harness, tokens["refresh_token"]).status_code == 200


def test_revoked_family_cannot_refresh(harness: ClockedHarness) -> None:
    auth = resource_server(harness)
    tokens = _tokens(harness)
    revoked = harness.client.post(
        "/revoke",
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token", "client_id": "web"},
    )
    assert revoked.status_code == 200
    assert_error(refresh(harness, tokens["refresh_token"]), 400, "invalid_grant")
    # RFC 7009 §2.1: revoking a refresh token SHOULD invalidate the access tokens of its grant.
    assert introspect(harness, tokens["access_token"], auth) == {"active": False}


def test_disabled_user_or_client_cannot_refresh(harness: ClockedHarness) -> None:
    tokens = _tokens(harness)
    harness.run(set_disabled, harness.services, "alice")
    assert_error(refresh(harness, tokens["refresh_token"]), 400, "invalid_grant")
    harness.run(set_disabled, harness.services, "alice", False)
    tokens = _tokens(harness)
    harness.run(harness.services.clients.set_disabled, "web")
    assert_error(refresh(harness, tokens["refresh_token"]), 401, "invalid_client")


def test_refresh_idle_and_absolute_lifetimes(harness: ClockedHarness) -> None:
    tokens = _tokens(harness)
    harness.tick(101)  # idle 100 s
    assert_error(refresh(harness, tokens["refresh_token"]), 400, "invalid_grant")
    tokens = _tokens(harness)
    current = tokens["refresh_token"]
    for _ in range(3):  # 90, 180, 270 s: each within the idle window, all within 300 s
        harness.tick(90)
        response = refresh(harness, current)
        assert response.status_code == 200, response.text
        current = response.json()["refresh_token"]
    harness.tick(31)  # 301 s after sign-in: past the absolute lifetime
    assert_error(refresh(harness, current), 400, "invalid_grant")


def test_refresh_token_is_not_an_access_token(harness: ClockedHarness) -> None:
    tokens = _tokens(harness)
    info = harness.client.get("/userinfo", headers={"authorization": f"Bearer {tokens['refresh_token']}"})
    assert info.status_code == 401
    # And an access token is not a refresh token.
    assert_error(refresh(harness, tokens["access_token"]), 400, "invalid_grant")
    assert_error(refresh(harness, tokens["id_token"]), 400, "invalid_grant")


def test_error_responses_are_json_with_no_store(harness: ClockedHarness) -> None:
    response = token_request(harness, {"grant_type": "refresh_token", "client_id": "web"})
    assert_error(response, 400, "invalid_request")
    assert response.headers["content-type"] == "application/json"
