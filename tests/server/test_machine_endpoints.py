"""Token, introspection and revocation endpoints through the real ASGI app."""

from __future__ import annotations

import base64

import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from starlette.testclient import TestClient

from bastion.protocol.models import TokenFormat
from tests.server.conftest import ISSUER
from tests.server.conftest import Server
from tests.server.conftest import register

FORM = {"content-type": "application/x-www-form-urlencoded"}


def token_request(client: TestClient, cid: str, secret: str | None, **form: str):  # type: ignore[no-untyped-def]
    return client.post("/token", data={"grant_type": "client_credentials", **form}, auth=(cid, secret or ""))


def test_client_credentials_issues_an_rfc9068_jwt(client: TestClient, server: Server) -> None:
    cid, secret = register(client, server, audience="https://api.example")
    response = token_request(client, cid, secret, scope="read")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["scope"] == "read"
    assert "refresh_token" not in body, "RFC 6749 §4.4.3"

    jwks = KeySet.import_key_set(client.get("/jwks.json").json())
    token = jwt.decode(body["access_token"], jwks, algorithms=["ES256"])
    assert token.header["typ"] == "at+jwt"
    claims = token.claims
    assert claims["iss"] == ISSUER
    assert claims["sub"] == cid
    assert claims["client_id"] == cid
    assert claims["aud"] == "https://api.example"
    assert claims["scope"] == "read"
    assert claims["exp"] - claims["iat"] == 900
    assert claims["jti"]
    issued = [e for e in server.events if e.type == "token.issued"]
    assert [(e.actor, e.subject, e.client, e.details["jti"]) for e in issued] == [
        (cid, cid, cid, claims["jti"])
    ]
    lines = orjson.dumps([e.as_dict() for e in server.events]).decode()
    assert body["access_token"] not in lines, "no tokens in the audit trail"


def test_client_secret_post_works_too(client: TestClient, server: Server) -> None:
    cid, secret = register(client, server)
    response = client.post(
        "/token", data={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret}
    )
    assert response.status_code == 200
    assert response.json()["scope"] == "read write"


@pytest.mark.parametrize(
    ("form", "auth", "status", "error"),
    [
        ({"grant_type": "client_credentials"}, ("nobody", "x"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
        ({"grant_type": "password", "username": "u", "password": "p"}, "ok", 400, "unsupported_grant_type"),
        ({"grant_type": "implicit"}, "ok", 400, "unsupported_grant_type"),
        ({}, "ok", 400, "invalid_request"),
        ({"grant_type": "client_credentials", "scope": "admin"}, "ok", 400, "invalid_scope"),
        (
            {"grant_type": "client_credentials", "resource": "https://evil.example"},
            "ok",
            400,
            "invalid_target",
        ),
    ],
)
def test_token_errors_follow_rfc6749(
    client: TestClient, server: Server, form: dict[str, str], auth: object, status: int, error: str
) -> None:
    cid, secret = register(client, server)
    credentials = (cid, secret) if auth == "ok" else auth
    response = client.post("/token", data=form, auth=credentials)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic realm=")


def test_wrong_secret_and_disabled_client_are_refused(client: TestClient, server: Server) -> None:
    cid, secret = register(client, server)
    assert token_request(client, cid, "wrong").status_code == 401
    client.portal.call(lambda: server.services.clients.set_disabled(cid))  # type: ignore[union-attr]
    response = token_request(client, cid, secret)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_malformed_requests_never_500(client: TestClient, server: Server) -> None:
    cid, secret = register(client, server)
    auth = "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode()
    cases = [
        (b"grant_type=client_credentials&grant_type=client_credentials", FORM),
        (b"\xff\xfe\x00", FORM),
        (b'{"grant_type": "client_credentials"}', {"content-type": "application/json"}),
        (b"grant_type=client_credentials", {}),
        (b"x" * 70_000, FORM),
    ]
    for body, headers in cases:
        response = client.post("/token", content=body, headers={**headers, "authorization": auth})
        assert 400 <= response.status_code < 500, body[:40]
        assert response.json()["error"] == "invalid_request"
    for header in ("Basic", "Basic %%%", "Basic " + base64.b64encode(b"\xff:\xfe").decode()):
        response = client.post(
            "/token", data={"grant_type": "client_credentials"}, headers={"authorization": header}
        )
        assert response.status_code == 401
    assert client.get("/token").status_code == 405


def test_public_clients_cannot_use_client_credentials(client: TestClient, server: Server) -> None:
    cid, _ = register(
        client,
        server,
        public=True,
        grant_types=("authorization_code",),
        redirect_uris=("https://app.example/cb",),
    )
    response = client.post("/token", data={"grant_type": "client_credentials", "client_id": cid})
    # A public client cannot authenticate, and client_credentials needs an authenticated client.
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_introspection_and_revocation_of_a_jwt(client: TestClient, server: Server) -> None:
    cid, secret = register(client, server)
    rs_id, rs_secret = register(client, server, name="resource server")
    access = token_request(client, cid, secret).json()["access_token"]

    def introspect(token: str) -> dict[str, object]:
        response = client.post("/introspect", data={"token": token}, auth=(rs_id, rs_secret or ""))
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        return response.json()  # type: ignore[no-any-return]

    live = introspect(access)
    assert live["active"] is True
    assert live["client_id"] == cid
    assert live["scope"] == "read write"
    assert live["token_type"] == "Bearer"
    assert introspect("garbage") == {"active": False}
    assert introspect(access[:-4] + "AAAA") == {"active": False}

    # RFC 7009 §2.1: a client may revoke only its own tokens; another client's is refused.
    refused = client.post("/revoke", data={"token": access}, auth=(rs_id, rs_secret or ""))
    assert refused.status_code == 400
    assert refused.json()["error"] == "unauthorized_client"
    assert introspect(access)["active"] is True
    assert client.post("/revoke", data={"token": access}, auth=(cid, secret or "")).status_code == 200
    assert introspect(access) == {"active": False}
    assert client.post("/revoke", data={"token": "unknown"}, auth=(cid, secret or "")).status_code == 200
    assert any(e.type == "token.revoked" and e.client == cid for e in server.events)


def test_introspection_requires_client_authentication(client: TestClient, server: Server) -> None:
    response = client.post("/introspect", data={"token": "x"})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_opaque_tokens_are_stored_hashed_and_introspectable(client: TestClient, server: Server) -> None:
    cid, secret = register(client, server, token_format=TokenFormat.OPAQUE)
    access = token_request(client, cid, secret).json()["access_token"]
    assert access.count(".") == 0
    found = client.portal.call(lambda: server.stores.tokens.get_access_token(access))  # type: ignore[union-attr]
    assert found is None, "stored by hash, never in clear"
    live = client.post("/introspect", data={"token": access}, auth=(cid, secret or "")).json()
    assert live["active"] is True
    assert live["sub"] == cid
    client.post(
        "/revoke", data={"token": access, "token_type_hint": "access_token"}, auth=(cid, secret or "")
    )
    assert client.post("/introspect", data={"token": access}, auth=(cid, secret or "")).json() == {
        "active": False
    }


def test_unsupported_token_type_hint(client: TestClient, server: Server) -> None:
    cid, secret = register(client, server)
    response = client.post(
        "/revoke", data={"token": "x", "token_type_hint": "id_token"}, auth=(cid, secret or "")
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_token_type"


def test_metadata_and_jwks(client: TestClient) -> None:
    metadata = client.get("/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == ISSUER
    assert metadata["token_endpoint"] == ISSUER + "/token"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert "implicit" not in metadata["grant_types_supported"]
    response = client.get("/jwks.json")
    max_age = int(response.headers["cache-control"].split("max-age=")[1])
    assert 0 < max_age <= 600
    for jwk in response.json()["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)


def test_secrets_in_the_url_are_refused(client: TestClient, server: Server) -> None:
    cid, secret = register(client, server)
    response = client.post(
        f"/token?client_id={cid}&client_secret={secret}", data={"grant_type": "client_credentials"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    response = client.post("/introspect?token=abc", data={"token": "abc"}, auth=(cid, secret or ""))
    assert response.status_code == 400


def test_introspection_reports_a_token_inactive_at_its_expiry(client: TestClient, server: Server) -> None:
    # RFC 7662 §2.2: active is false once the token has expired; the issuer needs no skew leeway.
    cid, secret = register(client, server)
    access = token_request(client, cid, secret).json()["access_token"]
    later = server.services.clock() + server.services.settings.access_token_ttl + 1
    result = client.portal.call(lambda: server.services.tokens.introspect(access, now=later))  # type: ignore[union-attr]
    assert result == {"active": False}


def test_no_signing_key_is_a_503_not_a_500(client: TestClient, server: Server) -> None:
    """Every key withdrawn and no replacement loaded yet: an outage, answered in RFC 6749 form."""
    cid, secret = register(client, server)

    async def withdraw_every_key() -> None:
        for key, _ in await server.stores.keys.list_keys():
            await server.stores.keys.delete_key(key.kid)
        await server.services.keys.load()

    client.portal.call(withdraw_every_key)  # type: ignore[union-attr]
    response = token_request(client, cid, secret)
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["retry-after"] == "5"
