"""The people-facing endpoints through the whole ASGI app (Starlette TestClient)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

from bastion.ops.audit import AuditEvent
from bastion.ops.audit import AuditLog
from bastion.protocol.rfc7636 import s256
from bastion.server.app import create_app
from bastion.server.people import people_routes
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.services.login import ThrottlePolicy
from bastion.services.users import create_role
from bastion.services.users import create_user
from bastion.settings import AuthorizationServerSettings
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate

from .flows import PASSWORD
from .flows import VERIFIER
from .flows import query
from .support import CHEAP_PASSWORDS
from .support import KEK
from .support import STATES
from .support import fast_state
from .support import web_client
from .support import with_state

ISSUER = "http://127.0.0.1:8000"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
TX_RE = re.compile(r'name="tx" value="([^"]+)"')


@dataclass
class Harness:
    client: TestClient
    services: Services
    events: list[AuditEvent]

    def run(self, coro_fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            return await coro_fn(*args, **kwargs)

        return self.client.portal.call(call)  # type: ignore[union-attr]


def _migrate(url: str, schema: str | None = None) -> None:
    async def run() -> None:
        stores = open_stores(url, "memory://", schema=schema)
        await migrate(stores.db)
        await stores.close()

    asyncio.run(run())


def make_harness(
    tmp_path: Path,
    issuer: str = ISSUER,
    templates_dir: Path | None = None,
    *,
    trusted_proxies: tuple[str, ...] = (),
    peer: str = "testclient",
    postgres: tuple[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    wrap: Callable[[TestClient, Services, list[AuditEvent]], Harness] = Harness,
    state: str = "sqlite",
    redis_url: str = "",
    **settings: Any,
) -> Iterator[Harness]:
    """The authorization server with sign-in routes, the public client ``web``, the role
    ``reader`` and the user ``alice``, on SQLite (or the ``postgres`` ``(url, schema)``), with
    fast state in a SQLite file as by default (or ``state`` ``memory`` or ``redis``)."""
    if postgres is None:
        url = f"sqlite:///{tmp_path / 'bastion.db'}"
        _migrate(url)
        stores = open_stores(url, "memory://")
    else:
        _migrate(*postgres)
        stores = open_stores(postgres[0], "memory://", schema=postgres[1])
    stores = with_state(stores, fast_state(state, tmp_path, redis_url))
    audit = AuditLog(tmp_path / "audit.log", clock=clock)
    events: list[AuditEvent] = []
    audit.listeners.append(events.append)
    config = AuthorizationServerSettings(issuer=issuer, trusted_proxies=trusted_proxies, **settings)
    services = Services.create(config, stores, Sealer(KEK), audit, clock=clock)
    policy = ThrottlePolicy(free_attempts=2, base_delay=0.01, max_delay=0.02, lockout_after=4, window=60)
    routes = people_routes(services, templates_dir, passwords=CHEAP_PASSWORDS, throttle=policy)
    app = create_app(services, extra_routes=routes)

    async def closing_state(scope: Scope, receive: Receive, send: Send) -> None:
        # The fast state closes when the app has shut down, on the app's loop: Redis
        # connections belong to it.
        try:
            await app(scope, receive, send)
        finally:
            if scope["type"] == "lifespan":
                await stores.state.close()

    with TestClient(closing_state, base_url=issuer, follow_redirects=False, client=(peer, 50000)) as client:
        harness = wrap(client, services, events)
        harness.run(web_client, services)
        harness.run(create_role, services, "reader", ["orders:read"])
        harness.run(
            create_user,
            services,
            "alice",
            PASSWORD,
            roles=["reader"],
            email="alice@example.com",
            name="Alice",
            passwords=CHEAP_PASSWORDS,
        )
        yield harness
    asyncio.run(stores.db.close())


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """The embedded default: SQLite database, SQLite file fast state."""
    yield from make_harness(tmp_path)


@pytest.fixture(params=STATES)
def state_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """The harness on each fast-state backend (SQLite file, memory, Redis), for the tests that
    lean on fast state most: sign-in, codes, throttling."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    yield from make_harness(tmp_path, state=request.param, redis_url=redis_url)


def authorize_url(**overrides: str) -> str:
    params = {
        "response_type": "code",
        "client_id": "web",
        "redirect_uri": "https://app.example/cb",
        "scope": "openid profile email orders:read offline_access",
        "state": "st",
        "nonce": "nn",
        "code_challenge": s256(VERIFIER),
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return "/authorize?" + urlencode(params)


def assert_page_headers(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "base-uri 'none'" in csp
    assert "script-src" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


def form_fields(html: str) -> tuple[str, str]:
    csrf = CSRF_RE.search(html)
    tx = TX_RE.search(html)
    assert csrf is not None
    assert tx is not None
    return csrf.group(1), tx.group(1)


def login(
    harness: Harness, url: str | None = None, password: str = PASSWORD, username: str = "alice"
) -> httpx.Response:
    """GET /authorize, follow to the login page, submit it; returns the login POST's response."""
    client = harness.client
    response = client.get(url or authorize_url())
    assert response.status_code == 302, response.text
    assert response.headers["location"].startswith("/login?tx=")
    page = client.get(response.headers["location"])
    assert page.status_code == 200
    assert_page_headers(page)
    csrf, tx = form_fields(page.text)
    return client.post(
        "/login", data={"csrf_token": csrf, "tx": tx, "username": username, "password": password}
    )


def consent(harness: Harness, location: str, decision: str = "allow") -> httpx.Response:
    page = harness.client.get(location)
    assert page.status_code == 200, page.text
    assert_page_headers(page)
    csrf, tx = form_fields(page.text)
    return harness.client.post("/consent", data={"csrf_token": csrf, "tx": tx, "decision": decision})


def code_for(harness: Harness, url: str | None = None, username: str = "alice") -> str:
    response = login(harness, url, username=username)
    assert response.status_code == 303
    response = harness.client.get(response.headers["location"])
    if response.headers["location"].startswith("/consent"):
        response = consent(harness, response.headers["location"])
    params = query(response.headers["location"])
    return params["code"]


def exchange(harness: Harness, code: str) -> dict[str, Any]:
    response = harness.client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "https://app.example/cb",
            "code_verifier": VERIFIER,
            "client_id": "web",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def test_full_flow_login_consent_token_userinfo_refresh(state_harness: Harness) -> None:
    harness = state_harness
    client = harness.client
    response = login(harness)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/authorize/resume?tx=")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("bastion_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie or "samesite=lax" in cookie.lower()
    assert "Path=/" in cookie
    response = client.get(response.headers["location"])
    assert response.status_code == 302
    assert response.headers["location"].startswith("/consent?tx=")
    page = client.get(response.headers["location"])
    assert "form-action 'self' https://app.example" in page.headers["content-security-policy"]
    assert "Shop" in page.text
    assert "orders:read" in page.text
    response = consent(harness, response.headers["location"])
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("https://app.example/cb?")
    params = query(location)
    assert params["state"] == "st"
    assert params["iss"] == ISSUER
    tokens = exchange(harness, params["code"])
    assert {"access_token", "refresh_token", "id_token", "expires_in"} <= tokens.keys()
    info = client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert info.status_code == 200
    assert info.json()["email"] == "alice@example.com"
    assert info.json()["preferred_username"] == "alice"
    refreshed = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "web"},
    )
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["refresh_token"] != tokens["refresh_token"]
    replay = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": "https://app.example/cb",
            "code_verifier": VERIFIER,
            "client_id": "web",
        },
    )
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    # Second authorization: signed in and consented already, straight back with a code.
    again = client.get(authorize_url())
    assert again.status_code == 302
    assert "code" in query(again.headers["location"])


def test_wrong_password_and_throttle(state_harness: Harness) -> None:
    harness = state_harness
    response = login(harness, password="not the password")
    assert response.status_code == 400
    assert_page_headers(response)
    assert "Incorrect username or password." in response.text
    statuses = [response.status_code]
    for _ in range(5):  # the 5th attempt comes after lockout_after=4 failures
        csrf, tx = form_fields(response.text)
        response = harness.client.post(
            "/login", data={"csrf_token": csrf, "tx": tx, "username": "alice", "password": "nope nope"}
        )
        statuses.append(response.status_code)
    # Every failure is a 400 and the lockout a 429: on SQLite file state the third attempt was
    # once a 500, and a test that only looked for "not a success" would have passed.
    assert statuses == [400, 400, 400, 400, 429, 429]
    assert int(response.headers["retry-after"]) >= 1
    assert "Too many attempts" in response.text


@pytest.mark.parametrize("state", STATES)
def test_throttle_counts_the_client_behind_a_trusted_proxy(
    tmp_path: Path, state: str, request: pytest.FixtureRequest
) -> None:
    # lockout_after=4 and ip_factor=5: one address may fail 20 times, across any accounts.
    redis_url = request.getfixturevalue("redis_url") if state == "redis" else ""
    for harness in make_harness(
        tmp_path, trusted_proxies=("10.0.0.0/8",), peer="10.1.2.3", state=state, redis_url=redis_url
    ):
        page = login(harness, password="not the password")
        statuses = []
        for i in range(22):
            forwarded_for, username = (
                ("198.51.100.9", "someone") if i == 21 else ("203.0.113.7", f"nobody{i}")
            )
            csrf, tx = form_fields(page.text)
            page = harness.client.post(
                "/login",
                data={"csrf_token": csrf, "tx": tx, "username": username, "password": "wrong"},
                headers={"x-forwarded-for": forwarded_for},
            )
            statuses.append(page.status_code)
        assert statuses[20] == 429, "the forwarded client address is throttled"
        assert statuses[21] == 400, "another client behind the same proxy is not"


def test_login_csrf_is_required(harness: Harness) -> None:
    client = harness.client
    response = client.get(authorize_url())
    page = client.get(response.headers["location"])
    _, tx = form_fields(page.text)
    forged = client.post(
        "/login", data={"csrf_token": "forged", "tx": tx, "username": "alice", "password": PASSWORD}
    )
    assert forged.status_code == 400
    assert_page_headers(forged)
    assert "set-cookie" not in forged.headers
    client.cookies.clear()
    csrf, tx = form_fields(page.text)
    no_cookie = client.post(
        "/login", data={"csrf_token": csrf, "tx": tx, "username": "alice", "password": PASSWORD}
    )
    assert no_cookie.status_code == 400


def test_errors_without_a_trusted_redirect_are_pages(harness: Harness) -> None:
    for url in (
        authorize_url(client_id="ghost"),
        authorize_url(redirect_uri="https://evil.example/cb"),
        "/authorize?response_type=code",
    ):
        response = harness.client.get(url)
        assert response.status_code in (400, 401)
        assert "location" not in response.headers
        assert_page_headers(response)
        assert "Something went wrong" in response.text
    response = harness.client.get(authorize_url(code_challenge_method="plain"))
    assert response.status_code == 302
    assert query(response.headers["location"]) == {
        "error": "invalid_request",
        "error_description": "code_challenge_method must be S256",
        "state": "st",
        "iss": ISSUER,
    }


def test_consent_deny_and_prompt_none(harness: Harness) -> None:
    client = harness.client
    response = client.get(authorize_url(prompt="none"))
    assert query(response.headers["location"])["error"] == "login_required"
    response = login(harness)
    response = client.get(response.headers["location"])
    denied = consent(harness, response.headers["location"], decision="deny")
    assert query(denied.headers["location"])["error"] == "access_denied"
    response = client.get(authorize_url(prompt="none"))
    assert query(response.headers["location"])["error"] == "consent_required"


def test_discovery_documents_agree(harness: Harness) -> None:
    oidc = harness.client.get("/.well-known/openid-configuration").json()
    oauth = harness.client.get("/.well-known/oauth-authorization-server").json()
    for name, value in oauth.items():
        if isinstance(value, list):
            assert set(value) <= set(oidc[name]), name
        else:
            assert oidc[name] == value, name
    assert oauth["authorization_endpoint"] == f"{ISSUER}/authorize"
    assert set(oauth["grant_types_supported"]) == {
        "client_credentials",
        "authorization_code",
        "refresh_token",
    }
    assert oidc["code_challenge_methods_supported"] == ["S256"]
    assert oidc["userinfo_endpoint"] == f"{ISSUER}/userinfo"
    assert oidc["end_session_endpoint"] == f"{ISSUER}/logout"
    assert oidc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert oidc["authorization_response_iss_parameter_supported"] is True


def test_userinfo_refuses_bad_tokens(harness: Harness) -> None:
    missing = harness.client.get("/userinfo")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "error=" not in missing.headers["www-authenticate"]
    bad = harness.client.get("/userinfo", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    tokens = exchange(harness, code_for(harness, authorize_url(scope="orders:read")))
    no_openid = harness.client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert no_openid.status_code == 403
    assert no_openid.json()["error"] == "insufficient_scope"


def test_rp_initiated_logout(harness: Harness) -> None:
    client = harness.client
    tokens = exchange(harness, code_for(harness))
    logout_url = "/logout?" + urlencode(
        {
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": "https://app.example/bye",
            "state": "s1",
        }
    )
    # Without the session cookie the hint alone signs nobody out.
    saved = dict(client.cookies)
    client.cookies.clear()
    elsewhere = client.get(logout_url)
    assert elsewhere.status_code == 303
    client.cookies.update(saved)
    assert "code" in query(client.get(authorize_url(prompt="none")).headers["location"])
    page = client.get(logout_url)
    assert page.status_code == 200
    assert_page_headers(page)
    csrf = CSRF_RE.search(page.text)
    assert csrf is not None
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    done = client.post("/logout", data=fields)
    assert done.status_code == 303
    assert done.headers["location"] == "https://app.example/bye?state=s1"
    response = client.get(authorize_url(prompt="none"))
    assert query(response.headers["location"])["error"] == "login_required"
    bad = client.get(
        "/logout?" + urlencode({"client_id": "web", "post_logout_redirect_uri": "https://evil.example/"})
    )
    assert bad.status_code == 400
    assert "location" not in bad.headers


def test_static_css_and_template_override(tmp_path: Path) -> None:
    custom = tmp_path / "templates"
    custom.mkdir()
    (custom / "error.html").write_text("<p>custom error page: {{ error }}</p>")
    for harness in make_harness(tmp_path, templates_dir=custom):
        css = harness.client.get("/static/people/bastion.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")
        page = harness.client.get(authorize_url(client_id="ghost"))
        assert page.text == "<p>custom error page: invalid_client</p>"


def test_https_issuer_uses_host_prefixed_secure_cookie(tmp_path: Path) -> None:
    for harness in make_harness(tmp_path, issuer="https://as.example"):
        response = harness.client.get(authorize_url())
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("__Host-bastion_session=")
        assert "Secure" in cookie
        assert "Path=/" in cookie
        assert "Domain" not in cookie
