"""End to end: `bastion serve` in a subprocess, Authlib as the client, joserfc as the verifier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.e2e.harness import Bastion

pytestmark = pytest.mark.slow


@pytest.fixture
def bastion(tmp_path: Path) -> Iterator[Bastion]:
    # A short publish delay so a rotation is seen signing within the test.
    instance = Bastion(tmp_path, "jwks_max_age = 2\n")
    yield instance
    instance.stop()


def verify(bastion: Bastion, token: str) -> dict[str, object]:
    jwks = KeySet.import_key_set(requests.get(f"{bastion.issuer}/jwks.json", timeout=5).json())
    decoded = jwt.decode(token, jwks, algorithms=["ES256"])
    assert decoded.header["typ"] == "at+jwt"
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": bastion.issuer},
        aud={"essential": True, "value": "https://api.example"},
        exp={"essential": True},
    )
    registry.validate(decoded.claims)
    return decoded.claims


def test_machine_client_lifecycle_with_independent_implementations(bastion: Bastion) -> None:
    created = bastion.cli_json(
        "clients",
        "create",
        "--name",
        "billing",
        "--scope",
        "invoices:read invoices:write",
        "--audience",
        "https://api.example",
    )
    resource_server = bastion.cli_json("clients", "create", "--name", "api", "--scope", "none")
    bastion.start()

    metadata = requests.get(f"{bastion.issuer}/.well-known/oauth-authorization-server", timeout=5).json()
    assert metadata["issuer"] == bastion.issuer
    session = OAuth2Session(
        created["client_id"], created["client_secret"], token_endpoint_auth_method="client_secret_basic"
    )

    def new_token() -> str:
        token = session.fetch_token(
            metadata["token_endpoint"], grant_type="client_credentials", scope="invoices:read"
        )
        assert token["token_type"] == "Bearer"
        return str(token["access_token"])

    def introspect(token: str) -> dict[str, object]:
        response = requests.post(
            metadata["introspection_endpoint"],
            data={"token": token},
            auth=(resource_server["client_id"], resource_server["client_secret"]),
            timeout=5,
        )
        assert response.status_code == 200
        return response.json()  # type: ignore[no-any-return]

    first = new_token()
    claims = verify(bastion, first)
    assert claims["scope"] == "invoices:read"
    assert claims["client_id"] == created["client_id"]
    assert introspect(first)["active"] is True

    revoked = requests.post(
        metadata["revocation_endpoint"],
        data={"token": first},
        auth=(created["client_id"], created["client_secret"]),
        timeout=5,
    )
    assert revoked.status_code == 200
    assert introspect(first) == {"active": False}

    # Rotate while the server runs: every token keeps verifying against the served JWKS, before
    # and after the new key starts signing, and the old key's tokens stay valid.
    before_kid = jwt.decode(
        first,
        KeySet.import_key_set(requests.get(f"{bastion.issuer}/jwks.json", timeout=5).json()),
        algorithms=["ES256"],
    ).header["kid"]
    bastion.cli("keys", "rotate", "--alg", "ES256", "--publish-delay", "3")
    kids_seen = set()
    import time

    deadline = time.monotonic() + 25
    second = None
    while time.monotonic() < deadline:
        token = new_token()
        verify(bastion, token)
        assert introspect(token)["active"] is True
        kid = jwt.decode(
            token,
            KeySet.import_key_set(requests.get(f"{bastion.issuer}/jwks.json", timeout=5).json()),
            algorithms=["ES256"],
        ).header["kid"]
        kids_seen.add(kid)
        second = second or (token if kid == before_kid else None)
        if len(kids_seen) == 2:
            break
        time.sleep(0.5)
    assert len(kids_seen) == 2, "the rotated key started signing"
    assert second is not None
    verify(bastion, second)
    assert introspect(second)["active"] is True
    keys = bastion.cli_json("keys", "list")
    assert sorted(k["state"] for k in keys if k["alg"] == "ES256") == ["active", "retired"]
