"""OpenID Connect: the ID token (Core §2, §3.1.3.6-7), UserInfo (Core §5.3 with RFC 6750) and
discovery (Discovery §3, RFC 8414 §2), through the whole ASGI app; ID tokens are verified with
joserfc against the published JWKS, independently of Bastion's own JOSE code."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from bastion.services.users import set_disabled
from tests.conformance.test_as_harness import ClockedHarness
from tests.conformance.test_as_harness import claims_of
from tests.conformance.test_as_harness import make_clocked_harness
from tests.conformance.test_as_harness import obtain_code
from tests.people.test_endpoints import ISSUER
from tests.people.test_endpoints import authorize_url
from tests.people.test_endpoints import exchange


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ClockedHarness]:
    yield from make_clocked_harness(tmp_path)


def verified_id_token(harness: ClockedHarness, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of an ID token verified against ``/jwks.json`` by joserfc."""
    jwks = harness.client.get("/jwks.json").json()
    for key in jwks["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys(), "private members published"
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    return dict(decoded.header), dict(decoded.claims)


def at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def alice_id(harness: ClockedHarness) -> str:
    from bastion.services.users import people

    user = harness.run(people(harness.services).users.get_user_by_username, "alice")
    return str(user.user_id)


# -- ID token --------------------------------------------------------------------------------------


def test_id_token_claims(harness: ClockedHarness) -> None:
    now = int(harness.clock.now)
    tokens = exchange(harness, obtain_code(harness, authorize_url(nonce="n-0S6_WzA2Mj")))
    header, claims = verified_id_token(harness, tokens["id_token"])
    assert header["alg"] == "RS256"
    assert header["kid"] in {key["kid"] for key in harness.client.get("/jwks.json").json()["keys"]}
    assert claims["iss"] == ISSUER
    assert claims["sub"] == alice_id(harness)
    assert claims["aud"] == "web" or claims["aud"] == ["web"]
    # Core §2: azp is needed only with several audiences; if present it must be the client.
    assert claims.get("azp", "web") == "web"
    assert claims["iat"] == now
    assert claims["exp"] > claims["iat"]
    assert claims["auth_time"] == now
    assert claims["nonce"] == "n-0S6_WzA2Mj"
    assert claims["at_hash"] == at_hash(tokens["access_token"])


def test_id_token_without_nonce_has_none_and_sub_is_stable(harness: ClockedHarness) -> None:
    first = exchange(harness, obtain_code(harness, authorize_url(nonce="")))
    _, claims = verified_id_token(harness, first["id_token"])
    assert "nonce" not in claims
    harness.tick(10)
    second = exchange(harness, obtain_code(harness, authorize_url(nonce="other")))
    _, again = verified_id_token(harness, second["id_token"])
    assert again["sub"] == claims["sub"]
    assert again["nonce"] == "other"
    assert again["at_hash"] == at_hash(second["access_token"])


def test_refreshed_id_token_keeps_identity_and_drops_nonce(harness: ClockedHarness) -> None:
    tokens = exchange(harness, obtain_code(harness))
    _, original = verified_id_token(harness, tokens["id_token"])
    harness.tick(30)
    refreshed = harness.client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "web"},
    ).json()
    _, claims = verified_id_token(harness, refreshed["id_token"])
    # Core §12.2: iss, sub, aud and auth_time as before; iat new; SHOULD NOT have a nonce.
    for name in ("iss", "sub", "aud", "auth_time"):
        assert claims[name] == original[name], name
    assert claims["iat"] == original["iat"] + 30
    assert "nonce" not in claims
    assert claims["at_hash"] == at_hash(refreshed["access_token"])


def test_auth_time_is_the_sign_in_time_not_the_code_time(harness: ClockedHarness) -> None:
    signed_in_at = int(harness.clock.now)
    exchange(harness, obtain_code(harness))
    harness.tick(120)
    tokens = exchange(harness, obtain_code(harness, authorize_url(max_age="3600")))
    assert claims_of(tokens["id_token"])["auth_time"] == signed_in_at


# -- UserInfo (Core §5.3, RFC 6750) ------------------------------------------------------------------


def test_userinfo_with_a_bearer_header(harness: ClockedHarness) -> None:
    tokens = exchange(harness, obtain_code(harness))
    for method in ("GET", "POST"):
        response = harness.client.request(
            method, "/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"}
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"
        body = response.json()
        # Core §5.3.2: sub MUST equal the ID token's sub.
        assert body["sub"] == claims_of(tokens["id_token"])["sub"]
        assert body["email"] == "alice@example.com"


def test_userinfo_refuses_the_token_in_the_query(harness: ClockedHarness) -> None:
    tokens = exchange(harness, obtain_code(harness))
    # RFC 6750 §2.3 is not offered: a token in the URL ends up in logs.
    response = harness.client.get("/userinfo", params={"access_token": tokens["access_token"]})
    assert response.status_code in (400, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "sub" not in response.json()


def test_userinfo_errors_carry_bearer_challenges(harness: ClockedHarness) -> None:
    tokens = exchange(harness, obtain_code(harness))
    missing = harness.client.get("/userinfo")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    for header in (
        "Bearer nope",
        "Bearer " + tokens["access_token"] + "x",
        "Bearer " + tokens["id_token"],  # an ID token is not an access token
        "Bearer " + tokens["refresh_token"],
    ):
        response = harness.client.get("/userinfo", headers={"authorization": header})
        assert response.status_code == 401, header
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert 'error="invalid_token"' in challenge
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"
    basic_scheme = harness.client.get("/userinfo", headers={"authorization": "Basic d2ViOg=="})
    assert basic_scheme.status_code == 401
    assert basic_scheme.headers["www-authenticate"].startswith("Bearer")


def test_userinfo_needs_the_openid_scope(harness: ClockedHarness) -> None:
    tokens = exchange(harness, obtain_code(harness, authorize_url(scope="orders:read")))
    response = harness.client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_userinfo_releases_claims_by_scope(harness: ClockedHarness) -> None:
    tokens = exchange(harness, obtain_code(harness, authorize_url(scope="openid")))
    body = harness.client.get(
        "/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"}
    ).json()
    assert set(body) == {"sub"}


def test_userinfo_refuses_revoked_and_disabled(harness: ClockedHarness) -> None:
    tokens = exchange(harness, obtain_code(harness))
    revoked = harness.client.post("/revoke", data={"token": tokens["access_token"], "client_id": "web"})
    assert revoked.status_code == 200
    response = harness.client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 401
    tokens = exchange(harness, obtain_code(harness))
    harness.run(set_disabled, harness.services, "alice")
    response = harness.client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 401


def test_userinfo_refuses_an_expired_token(harness: ClockedHarness) -> None:
    tokens = exchange(harness, obtain_code(harness))
    harness.tick(harness.services.settings.access_token_ttl + 120)
    response = harness.client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 401


def test_userinfo_refuses_a_machine_token(harness: ClockedHarness) -> None:
    _, secret = harness.run(
        harness.services.clients.create,
        name="Batch",
        grant_types=["client_credentials"],
        scopes=["openid"],
        client_id="batch",
    )
    issued = harness.client.post(
        "/token", data={"grant_type": "client_credentials", "client_id": "batch", "client_secret": secret}
    ).json()
    response = harness.client.get("/userinfo", headers={"authorization": f"Bearer {issued['access_token']}"})
    assert response.status_code in (401, 403)


# -- discovery (Discovery §3, RFC 8414 §2-3) -------------------------------------------------------


def test_discovery_advertises_only_what_is_implemented(harness: ClockedHarness) -> None:
    oidc = harness.client.get("/.well-known/openid-configuration")
    oauth = harness.client.get("/.well-known/oauth-authorization-server")
    assert oidc.status_code == oauth.status_code == 200
    doc = oidc.json()
    meta = oauth.json()
    assert doc["issuer"] == meta["issuer"] == ISSUER
    for name, value in meta.items():
        if isinstance(value, list):
            assert set(value) <= set(doc[name]), name
        else:
            assert doc[name] == value, name
    for document in (doc, meta):
        assert document["response_types_supported"] == ["code"]
        assert document["code_challenge_methods_supported"] == ["S256"]
        assert set(document["grant_types_supported"]) == {
            "authorization_code",
            "refresh_token",
            "client_credentials",
        }
        assert set(document["token_endpoint_auth_methods_supported"]) == {
            "client_secret_basic",
            "client_secret_post",
            "none",
        }
        assert document["authorization_response_iss_parameter_supported"] is True
        for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            assert document[endpoint].startswith(ISSUER + "/")
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["subject_types_supported"] == ["public"]
    assert "openid" in doc["scopes_supported"]
    assert {"sub", "iss", "aud", "exp", "iat", "auth_time", "nonce"} <= set(doc["claims_supported"])
    assert doc.get("request_parameter_supported", False) is False
    assert doc.get("request_uri_parameter_supported", False) is False
    assert set(doc.get("response_modes_supported", ["query"])) <= {"query"}
    assert "none" not in doc["id_token_signing_alg_values_supported"]


def test_discovery_endpoints_answer(harness: ClockedHarness) -> None:
    doc = harness.client.get("/.well-known/openid-configuration").json()
    for name in ("jwks_uri",):
        path = doc[name].removeprefix(ISSUER)
        assert harness.client.get(path).status_code == 200
    for name in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        # An empty POST is not an application/x-www-form-urlencoded request (RFC 6749 §3.2,
        # RFC 7662 §2.1, RFC 7009 §2.1): invalid_request, 400 (RFC 6749 §5.2).
        response = harness.client.post(doc[name].removeprefix(ISSUER))
        assert response.status_code == 400, name
        assert response.json()["error"] == "invalid_request", name
    # RFC 6750 §3.1: a request without credentials gets 401 and a challenge without an error code.
    response = harness.client.post(doc["userinfo_endpoint"].removeprefix(ISSUER))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == f'Bearer realm="{ISSUER}"'
    # RFC 6749 §4.1.2.1: without a (valid) client_id and redirect_uri the server "SHOULD inform
    # the resource owner of the error and MUST NOT automatically redirect": an error page, 400.
    response = harness.client.get(doc["authorization_endpoint"].removeprefix(ISSUER))
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    # RP-Initiated Logout 1.0 §2: every parameter is optional, so a bare GET is a valid request;
    # with no post_logout_redirect_uri the OP shows its own page (§3), no redirect.
    response = harness.client.get(doc["end_session_endpoint"].removeprefix(ISSUER))
    assert response.status_code == 200
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")


# -- the access token of a sign-in (RFC 9068) ------------------------------------------------------


def test_access_token_is_an_rfc9068_jwt_signed_with_a_published_key(harness: ClockedHarness) -> None:
    now = int(harness.clock.now)
    tokens = exchange(harness, obtain_code(harness))
    jwks = KeySet.import_key_set(harness.client.get("/jwks.json").json())
    decoded = jwt.decode(tokens["access_token"], jwks, algorithms=["ES256"])
    # RFC 9068 §2.1: "typ" MUST be "at+jwt" (or "application/at+jwt").
    assert decoded.header["typ"] in ("at+jwt", "application/at+jwt")
    claims = decoded.claims
    assert claims["iss"] == ISSUER
    assert claims["sub"] == alice_id(harness)
    assert claims["client_id"] == "web"
    assert claims["aud"]
    assert claims["iat"] == now
    assert claims["exp"] == now + harness.services.settings.access_token_ttl
    assert claims["jti"]
    assert claims["auth_time"] == now
    assert set(claims["scope"].split()) == set(tokens["scope"].split())


def test_tokens_of_a_disabled_client_stop_working(harness: ClockedHarness) -> None:
    from tests.conformance.test_as_token import introspect
    from tests.conformance.test_as_token import resource_server

    api = resource_server(harness)
    tokens = exchange(harness, obtain_code(harness))
    assert introspect(harness, tokens["access_token"], api)["active"] is True
    harness.run(harness.services.clients.set_disabled, "web")
    assert introspect(harness, tokens["access_token"], api) == {"active": False}
    response = harness.client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 401
    harness.run(harness.services.clients.set_disabled, "web", False)
    assert introspect(harness, tokens["access_token"], api)["active"] is True
