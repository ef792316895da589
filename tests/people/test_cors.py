"""CORS at the authorization server through the whole ASGI app: which endpoints a browser-based
client may call from script, from which origins, and how fast a client change is seen."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from bastion.protocol.models import Client
from bastion.server.cors import web_origin

from .flows import VERIFIER
from .flows import query
from .test_endpoints import Harness
from .test_endpoints import consent
from .test_endpoints import login
from .test_endpoints import make_harness

APP = "https://app.example"  # the public client "web" redirects to https://app.example/cb
EVIL = "https://evil.example"


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Harness, Clock]]:
    """The harness on the embedded default (SQLite) and on PostgreSQL, with a clock to move."""
    clock = Clock()
    postgres = request.getfixturevalue("postgres_schema") if request.param == "postgres" else None
    yield from ((h, clock) for h in make_harness(tmp_path, clock=clock, postgres=postgres))


@pytest.fixture
def harness(clocked: tuple[Harness, Clock]) -> Harness:
    return clocked[0]


def preflight(
    harness: Harness, path: str, origin: str, method: str, headers: str | None = None
) -> httpx.Response:
    sent = {"origin": origin, "access-control-request-method": method}
    if headers is not None:
        sent["access-control-request-headers"] = headers
    return harness.client.options(path, headers=sent)


def cors(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def vary(response: httpx.Response) -> set[str]:
    return {token.strip() for value in response.headers.get_list("vary") for token in value.split(",")}


# -- /token, /revoke, /userinfo: registered public clients' origins --------------------------------


def test_token_preflight_from_a_public_clients_origin_is_204(harness: Harness) -> None:
    # Before this, OPTIONS /token was 405: no single-page application could use a public client.
    response = preflight(harness, "/token", APP, "POST", "content-type")
    assert response.status_code == 204
    assert cors(response) == {
        "access-control-allow-origin": APP,
        "access-control-allow-methods": "POST",
        "access-control-allow-headers": "content-type",
        "access-control-max-age": "600",
    }
    assert "origin" in vary(response)


@pytest.mark.parametrize(
    ("path", "origin", "method", "headers"),
    [
        pytest.param("/token", EVIL, "POST", None, id="unregistered-origin"),
        pytest.param("/token", "null", "POST", None, id="null-origin"),
        pytest.param("/token", "http://app.example", "POST", None, id="other-scheme"),
        pytest.param("/token", "https://app.example:8443", "POST", None, id="other-port"),
        pytest.param("/token", APP, "PUT", None, id="method"),
        pytest.param("/token", APP, "POST", "authorization", id="authorization-header"),
        pytest.param("/revoke", EVIL, "POST", None, id="revoke-unregistered"),
        pytest.param("/userinfo", EVIL, "GET", "authorization", id="userinfo-unregistered"),
    ],
)
def test_other_preflights_are_refused_without_cors_headers(
    harness: Harness, path: str, origin: str, method: str, headers: str | None
) -> None:
    response = preflight(harness, path, origin, method, headers)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert cors(response) == {}
    assert "origin" in vary(response)


def test_a_spa_exchanges_its_code_from_its_origin(harness: Harness) -> None:
    redirect = login(harness)
    resumed = harness.client.get(redirect.headers["location"])
    code = query(consent(harness, resumed.headers["location"]).headers["location"])["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": f"{APP}/cb",
        "code_verifier": VERIFIER,
        "client_id": "web",
    }
    response = harness.client.post("/token", data=form, headers={"origin": APP})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert "access-control-allow-credentials" not in response.headers  # no cookies here, ever
    assert response.headers["access-control-expose-headers"] == "www-authenticate, retry-after"
    assert "origin" in vary(response)
    tokens = response.json()

    info = harness.client.get(
        "/userinfo", headers={"origin": APP, "authorization": f"Bearer {tokens['access_token']}"}
    )
    assert info.status_code == 200
    assert info.headers["access-control-allow-origin"] == APP
    assert preflight(harness, "/userinfo", APP, "GET", "authorization").status_code == 204

    revoked = harness.client.post(
        "/revoke", data={"token": tokens["refresh_token"], "client_id": "web"}, headers={"origin": APP}
    )
    assert revoked.status_code == 200
    assert revoked.headers["access-control-allow-origin"] == APP


def test_an_error_is_readable_from_the_clients_origin_and_not_from_another(harness: Harness) -> None:
    form = {"grant_type": "authorization_code", "code": "nope", "client_id": "web"}
    mine = harness.client.post("/token", data=form, headers={"origin": APP})
    other = harness.client.post("/token", data=form, headers={"origin": EVIL})
    machine = harness.client.post("/token", data=form)
    assert mine.status_code == other.status_code == machine.status_code == 400
    assert mine.headers["access-control-allow-origin"] == APP
    assert cors(other) == cors(machine) == {}
    assert "origin" in vary(other)
    assert "origin" in vary(machine)


def test_a_confidential_clients_origin_is_never_allowed(harness: Harness) -> None:
    harness.run(
        harness.services.clients.create,
        name="Back end",
        grant_types=["authorization_code"],
        redirect_uris=["https://backend.example/cb"],
    )
    assert preflight(harness, "/token", "https://backend.example", "POST").status_code == 403


def test_a_client_change_in_this_process_is_seen_at_once(harness: Harness) -> None:
    origin = "https://new.example"
    assert preflight(harness, "/token", origin, "POST").status_code == 403  # the set is now cached
    clients = harness.services.clients
    harness.run(
        clients.create,
        name="New SPA",
        public=True,
        grant_types=["authorization_code"],
        redirect_uris=[f"{origin}/callback"],
        client_id="new-spa",
    )
    assert preflight(harness, "/token", origin, "POST").status_code == 204
    harness.run(clients.set_disabled, "new-spa")
    assert preflight(harness, "/token", origin, "POST").status_code == 403
    harness.run(clients.set_disabled, "new-spa", False)
    assert preflight(harness, "/token", origin, "POST").status_code == 204
    harness.run(clients.delete, "new-spa")
    assert preflight(harness, "/token", origin, "POST").status_code == 403


def test_another_processs_change_is_seen_within_client_cache_ttl(clocked: tuple[Harness, Clock]) -> None:
    harness, clock = clocked
    origin = "https://other-process.example"
    assert preflight(harness, "/token", origin, "POST").status_code == 403
    # Written to the store directly, as `bastion clients create` in another process does.
    record = Client(
        client_id="elsewhere",
        name="Elsewhere",
        public=True,
        grant_types=frozenset({"authorization_code"}),
        scopes=frozenset(),
        redirect_uris=(f"{origin}/cb",),
    )
    harness.run(harness.services.stores.clients.create_client, record)
    assert preflight(harness, "/token", origin, "POST").status_code == 403  # cached: within the bound
    clock.now += harness.services.settings.client_cache_ttl
    assert preflight(harness, "/token", origin, "POST").status_code == 204
    harness.run(
        harness.services.stores.clients.update_client,
        dataclasses.replace(record, redirect_uris=("com.example:/cb",)),
    )
    clock.now += harness.services.settings.client_cache_ttl
    assert preflight(harness, "/token", origin, "POST").status_code == 403


# -- public documents: any origin ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/jwks.json", "/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"]
)
@pytest.mark.parametrize("origin", [EVIL, None])
def test_public_documents_are_readable_from_any_origin(
    harness: Harness, path: str, origin: str | None
) -> None:
    response = harness.client.get(path, headers={"origin": origin} if origin else {})
    assert response.status_code == 200
    assert cors(response) == {"access-control-allow-origin": "*"}
    assert response.headers["cache-control"].startswith("public")  # the same bytes for everyone
    allowed = preflight(harness, path, EVIL, "GET")
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "*"


# -- never CORS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/authorize", "/login", "/consent", "/logout", "/introspect"])
def test_interactive_pages_and_introspection_never_answer_cors(harness: Harness, path: str) -> None:
    answered = preflight(harness, path, APP, "POST")
    assert answered.status_code == 405
    assert cors(answered) == {}
    page = harness.client.get(path, headers={"origin": APP})
    assert cors(page) == {}


# -- origins of redirect URIs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "origin"),
    [
        ("https://app.example/cb", "https://app.example"),
        ("https://App.Example:443/cb?x=1", "https://app.example"),
        ("http://localhost:5173/callback", "http://localhost:5173"),
        ("http://127.0.0.1/cb", "http://127.0.0.1"),
        ("http://[::1]:8080/cb", "http://[::1]:8080"),
        ("com.example.app:/oauth", None),
        ("https://app.example:99999/cb", None),
    ],
)
def test_web_origin_of_a_redirect_uri(uri: str, origin: Any) -> None:
    assert web_origin(uri) == origin


def test_a_client_store_that_fails_mid_run_allows_no_origin(tmp_path: Path) -> None:
    """The embedded default's database becomes unreadable after the origins were cached: once the
    cache is stale, preflights are refused (fail closed, never a 500) and the public documents
    keep their ``*``."""
    clock = Clock()
    for harness in make_harness(tmp_path, clock=clock):
        assert preflight(harness, "/token", APP, "POST").status_code == 204
        db = sqlite3.connect(str(tmp_path / "bastion.db"))
        db.execute("ALTER TABLE clients RENAME TO clients_gone")
        db.commit()
        db.close()
        clock.now += 3600
        refused = preflight(harness, "/token", APP, "POST")
        assert refused.status_code == 403
        assert cors(refused) == {}
        jwks = harness.client.get("/jwks.json", headers={"origin": APP})
        assert jwks.headers["access-control-allow-origin"] == "*"
