"""Signing-key revocation and import through the whole ASGI app, on SQLite and PostgreSQL.

Another process (``bastion keys revoke`` / ``import``) changes the keys: a second
:class:`KeyService` over the same durable store and fast state. The app learns of it from the
announcement on the keys channel, as a running server does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey

from bastion.protocol import jose
from bastion.services.crypto import Sealer
from bastion.services.keys import KeyService
from bastion.services.keys import Revocation

from .support import KEK
from .test_endpoints import ISSUER
from .test_endpoints import Harness
from .test_endpoints import code_for
from .test_endpoints import exchange
from .test_endpoints import make_harness


@pytest.fixture(params=["sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    postgres = request.getfixturevalue("postgres_schema") if request.param == "postgres" else None
    yield from make_harness(tmp_path, postgres=postgres)


def elsewhere(harness: Harness) -> KeyService:
    """The keys as another process sees them (the CLI): same store, same fast state."""
    services = harness.services
    return KeyService(services.stores.keys, Sealer(KEK), services.keys.policy, state=services.stores.state)


def jwks_kids(harness: Harness) -> set[str]:
    response = harness.client.get("/jwks.json")
    assert response.status_code == 200
    return {key["kid"] for key in response.json()["keys"]}


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def resource_server(harness: Harness) -> tuple[str, str]:
    client, secret = harness.run(harness.services.clients.create, name="rs", scopes=("orders:read",))
    assert secret is not None
    return client.client_id, secret


def introspect(harness: Harness, rs: tuple[str, str], token: str) -> dict[str, Any]:
    response = harness.client.post("/introspect", data={"token": token}, auth=rs)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def refreshed_access_token(harness: Harness, refresh_token: str) -> str:
    response = harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "web"}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def userinfo(harness: Harness, token: str) -> httpx.Response:
    return harness.client.get("/userinfo", headers={"authorization": f"Bearer {token}"})


def test_a_revoked_key_leaves_jwks_and_its_tokens_are_refused(harness: Harness) -> None:
    rs = resource_server(harness)
    tokens = exchange(harness, code_for(harness))
    access = tokens["access_token"]
    kid = jose.parse_compact(access).header["kid"]
    # Verified once: the token now sits in the server's verified-token cache.
    assert introspect(harness, rs, access)["active"] is True
    assert userinfo(harness, access).status_code == 200
    assert kid in jwks_kids(harness)

    async def revoke() -> Revocation:
        other = elsewhere(harness)
        return await other.revoke(kid)

    done = harness.run(revoke)
    wait_for(lambda: kid not in jwks_kids(harness), "JWKS drops the revoked kid")
    assert done.replacement is not None
    assert done.replacement.kid in jwks_kids(harness)

    assert introspect(harness, rs, access) == {"active": False}
    refused = userinfo(harness, access)
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_token"
    assert refused.headers["www-authenticate"] == f'Bearer realm="{ISSUER}", error="invalid_token"'

    # The server signs with the replacement from now on, and those tokens work.
    fresh = refreshed_access_token(harness, tokens["refresh_token"])
    assert jose.parse_compact(fresh).header["kid"] == done.replacement.kid
    assert introspect(harness, rs, fresh)["active"] is True
    assert userinfo(harness, fresh).status_code == 200


def test_a_token_signed_by_an_imported_key_before_the_import_works_after(harness: Harness) -> None:
    rs = resource_server(harness)
    tokens = exchange(harness, code_for(harness))
    alice = introspect(harness, rs, tokens["access_token"])["sub"]
    # The previous provider's key and a token it issued (joserfc, as another issuer would).
    external = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    token = jwt.encode(
        {"alg": "ES256", "typ": "at+jwt", "kid": "legacy-1"},
        {
            "iss": ISSUER,
            "sub": alice,
            "aud": ISSUER,
            "client_id": "web",
            "scope": "openid email",
            "iat": now,
            "exp": now + 600,
            "jti": "legacy-token-1",
        },
        ECKey.import_key(
            external.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        ),
    )
    assert introspect(harness, rs, token) == {"active": False}, "unknown before the import"

    async def import_key() -> None:
        await elsewhere(harness).import_key(external, kid="legacy-1", alg="ES256")

    harness.run(import_key)
    wait_for(lambda: "legacy-1" in jwks_kids(harness), "JWKS lists the imported kid")
    [published] = [k for k in harness.client.get("/jwks.json").json()["keys"] if k["kid"] == "legacy-1"]
    assert published == {**jose.public_jwk(external), "kid": "legacy-1", "alg": "ES256", "use": "sig"}

    live = introspect(harness, rs, token)
    assert live["active"] is True
    assert (live["sub"], live["jti"]) == (alice, "legacy-token-1")
    info = userinfo(harness, token)
    assert info.status_code == 200
    assert info.json()["email"] == "alice@example.com"
    # Verify-only: the server keeps signing with its own key.
    fresh = refreshed_access_token(harness, tokens["refresh_token"])
    assert jose.parse_compact(fresh).header["kid"] != "legacy-1"
