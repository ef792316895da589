"""The authorization server fuzzed from its own OpenAPI document (schemathesis).

The app is the one ``bastion serve`` runs (sign-in routes included) on the embedded default
stores: SQLite, and fast state in a SQLite file. The document is the one it serves at
``/openapi.json``. Two runs: one authenticated as a confidential client allowed every grant,
with real codes, refresh tokens and access tokens mixed into the generated bodies so the fuzz
reaches the grant logic; one without credentials (a public client's id mixed in). Each answer:
no 5xx, conforms to the document, and every error is RFC 6749 JSON in the status its code calls
for (see :func:`tests.conformance.openapi_fuzz.oauth_error_form`). A short run against a real
``bastion serve`` on loopback checks the same over HTTP.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from bastion.settings import ClientAuthThrottleSettings
from tests.conformance.openapi_fuzz import examples
from tests.conformance.openapi_fuzz import fuzz
from tests.conformance.openapi_fuzz import oauth_error_form
from tests.conformance.openapi_fuzz import url_client
from tests.e2e.harness import Bastion
from tests.people.flows import VERIFIER
from tests.people.flows import query
from tests.people.test_endpoints import Harness
from tests.people.test_endpoints import authorize_url
from tests.people.test_endpoints import code_for
from tests.people.test_endpoints import make_harness

#: The confidential client of the authenticated run, allowed every grant.
REDIRECT = "https://conf.example/cb"
SCOPES = ["openid", "profile", "offline_access", "orders:read", "bastion:revocations"]


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


@pytest.fixture
def unthrottled(tmp_path: Path) -> Iterator[Harness]:
    """Hundreds of failed authentications from one address lock it (429, checked like any
    answer); raised limits let a long session (``BASTION_FUZZ_EXAMPLES``) still reach every
    endpoint. tests/server/test_client_auth_limits.py tests the limits themselves."""
    limit = 1_000_000
    throttle = ClientAuthThrottleSettings(per_client_address=limit, per_address=limit, per_client=limit)
    yield from make_harness(tmp_path, client_auth_throttle=throttle)


def served_document(harness: Harness) -> dict[str, Any]:
    response = harness.client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def confidential(harness: Harness) -> str:
    """Register ``conf`` (every grant) and return its Basic header."""
    _, secret = harness.run(
        harness.services.clients.create,
        name="Back office",
        grant_types=["client_credentials", "authorization_code", "refresh_token"],
        scopes=SCOPES,
        redirect_uris=[REDIRECT],
        client_id="conf",
    )
    assert secret is not None
    return basic("conf", secret)


def grants(
    harness: Harness, client_id: str, redirect: str, count: int, authorization: str | None = None
) -> tuple[list[str], list[str]]:
    """``count`` fresh codes for ``client_id`` and as many refresh tokens (one code spent each);
    a confidential client authenticates with ``authorization``."""
    url = authorize_url(client_id=client_id, redirect_uri=redirect, scope="openid offline_access")
    codes = [code_for(harness, url)]
    while len(codes) < 2 * count:  # signed in and consented: straight back with a code
        response = harness.client.get(url)
        assert response.status_code == 302, response.text
        codes.append(query(response.headers["location"])["code"])
    refresh = []
    for code in codes[count:]:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect}
        form["code_verifier"] = VERIFIER
        if authorization is None:
            form["client_id"] = client_id
        headers = {"authorization": authorization} if authorization else {}
        response = harness.client.post("/token", data=form, headers=headers)
        assert response.status_code == 200, response.text
        refresh.append(response.json()["refresh_token"])
    return codes[:count], refresh


def test_fuzz_authenticated(harness: Harness) -> None:
    authorization = confidential(harness)
    codes, refresh = grants(harness, "conf", REDIRECT, 3, authorization)
    token = harness.client.post(
        "/token",
        data={"grant_type": "client_credentials", "scope": "orders:read"},
        headers={"authorization": authorization},
    ).json()["access_token"]
    values = {
        "code": st.sampled_from(codes),
        "refresh_token": st.sampled_from(refresh),
        "token": st.sampled_from([token, *refresh]),
        "redirect_uri": st.just(REDIRECT),
        "code_verifier": st.just(VERIFIER),
        "scope": st.sampled_from(["orders:read", "openid offline_access", "openid"]),
        "resource": st.none(),
        "client_id": st.just("conf"),
        "client_secret": st.none(),
    }
    report = fuzz(
        harness.client,
        served_document(harness),
        authorization=authorization,
        max_examples=examples(40),
        extra=[oauth_error_form],
        values=values,
    )
    # The fuzz reached the logic: tokens were issued, introspected and revoked, not only refused.
    for label in ("POST /token", "POST /introspect", "POST /revoke", "POST /revocations"):
        assert report.reached(label, 200), report.statuses
    assert report.reached("POST /token", 400)


def test_fuzz_without_credentials(unthrottled: Harness) -> None:
    harness = unthrottled
    codes, refresh = grants(harness, "web", "https://app.example/cb", 2)
    values = {
        "code": st.sampled_from(codes),
        "refresh_token": st.sampled_from(refresh),
        "token": st.sampled_from(refresh),
        "redirect_uri": st.just("https://app.example/cb"),
        "code_verifier": st.just(VERIFIER),
        "client_id": st.just("web"),
    }
    report = fuzz(
        harness.client,
        served_document(harness),
        max_examples=examples(40),
        extra=[oauth_error_form],
        values=values,
    )
    assert report.reached("POST /introspect", 401), report.statuses
    assert report.reached("POST /revoke", 200), report.statuses


@pytest.mark.slow
def test_fuzz_a_real_server(tmp_path: Path) -> None:
    server = Bastion(tmp_path)
    created = server.cli_json(
        "clients", "create", "--name", "svc", "--scope", "orders:read bastion:revocations"
    )
    server.start()
    try:
        with url_client(server.issuer) as client:
            document = client.get("/openapi.json").json()
            report = fuzz(
                client,
                document,
                authorization=basic(created["client_id"], created["client_secret"]),
                max_examples=examples(8),
                extra=[oauth_error_form],
                values={
                    "client_id": st.just(created["client_id"]),
                    "client_secret": st.none(),
                    "scope": st.just("orders:read"),
                    "resource": st.none(),
                },
            )
    finally:
        server.stop()
    assert report.reached("POST /token", 200), report.statuses
