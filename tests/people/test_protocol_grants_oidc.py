"""Pure rules of the code and refresh grants and of OpenID Connect (ID token, UserInfo, discovery,
RP-initiated logout)."""

from __future__ import annotations

import dataclasses
import hashlib

import orjson
import pytest

from bastion.protocol import jose
from bastion.protocol.errors import InsufficientScope
from bastion.protocol.errors import InvalidGrant
from bastion.protocol.errors import InvalidRequest
from bastion.protocol.errors import InvalidScope
from bastion.protocol.errors import UnauthorizedClient
from bastion.protocol.models import Client
from bastion.protocol.models import User
from bastion.protocol.oidc import core
from bastion.protocol.oidc import discovery
from bastion.protocol.oidc import logout
from bastion.protocol.oidc.userinfo import userinfo_claims
from bastion.protocol.rfc6749.grants import authorization_code as ac
from bastion.protocol.rfc6749.grants import refresh_token as rt
from bastion.protocol.rfc7636 import s256
from bastion.protocol.rfc8414 import metadata

VERIFIER = "v" * 50
CLIENT = Client(
    client_id="web",
    name="Web",
    public=True,
    grant_types=frozenset({"authorization_code"}),
    scopes=frozenset({"openid", "offline_access", "a"}),
    redirect_uris=("https://app.example/cb",),
    post_logout_redirect_uris=("https://app.example/bye",),
)
CODE = ac.AuthorizationCode(
    client_id="web",
    redirect_uri="https://app.example/cb",
    scope=("openid", "a"),
    code_challenge=s256(VERIFIER),
    subject="u1",
    sid="s1",
    auth_time=990.0,
    issued_at=1000.0,
    expires_at=1060.0,
    nonce="n",
)


def test_code_record_round_trips() -> None:
    assert ac.AuthorizationCode.from_json(CODE.to_json()) == CODE


def test_code_token_request_needs_code() -> None:
    with pytest.raises(InvalidRequest):
        ac.parse_code_token_request({"redirect_uri": "x"})
    parsed = ac.parse_code_token_request({"code": "c", "code_verifier": VERIFIER})
    assert parsed == ac.CodeTokenRequest("c", None, VERIFIER)


def _redeem(**changes: object) -> None:
    request = ac.CodeTokenRequest("c", "https://app.example/cb", VERIFIER)
    request = dataclasses.replace(request, **{k: v for k, v in changes.items() if k != "now"})  # type: ignore[arg-type]
    client = CLIENT
    ac.validate_redemption(CODE, client, request, float(changes.get("now", 1059.0)))  # type: ignore[arg-type]


def test_redemption_accepts_the_bound_request() -> None:
    _redeem()


@pytest.mark.parametrize(
    "changes",
    [
        {"now": 1060.0},
        {"redirect_uri": None},
        {"redirect_uri": "https://app.example/cb?x"},
        {"code_verifier": None},
        {"code_verifier": "w" * 50},
    ],
)
def test_redemption_refusals(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidGrant):
        _redeem(**changes)


def test_redemption_by_another_client() -> None:
    other = dataclasses.replace(CLIENT, client_id="other")
    with pytest.raises(InvalidGrant):
        ac.validate_redemption(CODE, other, ac.CodeTokenRequest("c", CODE.redirect_uri, VERIFIER), 1001.0)


FAMILY = rt.RefreshFamily(
    family_id="f1",
    client_id="web",
    subject="u1",
    scope=("openid", "offline_access", "a"),
    sid="s1",
    auth_time=1000.0,
    created_at=1000.0,
    absolute_expires_at=1000.0 + 30 * 86400,
)
TOKEN = rt.RefreshToken(token_hash="h", family_id="f1", issued_at=1000.0, expires_at=1000.0 + 14 * 86400)


def test_refresh_issuance_rule() -> None:
    assert rt.issues_refresh_token(CLIENT, ["openid", "offline_access"])
    assert not rt.issues_refresh_token(CLIENT, ["openid"])
    with_grant = dataclasses.replace(CLIENT, grant_types=frozenset({"authorization_code", "refresh_token"}))
    assert rt.issues_refresh_token(with_grant, ["openid"])


def test_may_refresh() -> None:
    rt.may_refresh(CLIENT, FAMILY)  # offline_access in the family's scope
    with pytest.raises(InvalidGrant):
        rt.may_refresh(dataclasses.replace(CLIENT, client_id="x"), FAMILY)
    with pytest.raises(UnauthorizedClient):
        rt.may_refresh(CLIENT, dataclasses.replace(FAMILY, scope=("openid",)))


def test_parse_refresh_request() -> None:
    with pytest.raises(InvalidRequest):
        rt.parse_refresh_request({})
    assert rt.parse_refresh_request({"refresh_token": "t", "scope": "a"}) == ("t", "a")


def test_scope_only_narrows() -> None:
    assert rt.narrow_scope(None, FAMILY.scope) == FAMILY.scope
    assert rt.narrow_scope("a", FAMILY.scope) == ("a",)
    with pytest.raises(InvalidScope):
        rt.narrow_scope("a b", FAMILY.scope)


def test_classify_presented() -> None:
    now = 2000.0
    assert rt.classify_presented(TOKEN, FAMILY, now, 10) is rt.Presented.CURRENT
    rotated = dataclasses.replace(TOKEN, rotated_at=1995.0)
    assert rt.classify_presented(rotated, FAMILY, now, 10) is rt.Presented.GRACE
    assert rt.classify_presented(rotated, FAMILY, 2005.0, 10) is rt.Presented.GRACE
    assert rt.classify_presented(rotated, FAMILY, 2005.1, 10) is rt.Presented.REUSE
    assert rt.classify_presented(rotated, FAMILY, 1995.0, 0) is rt.Presented.REUSE  # grace 0: none
    with pytest.raises(InvalidGrant):
        rt.classify_presented(TOKEN, dataclasses.replace(FAMILY, revoked_at=1500.0), now, 10)
    with pytest.raises(InvalidGrant):
        rt.classify_presented(TOKEN, FAMILY, TOKEN.expires_at, 10)  # idle lifetime
    with pytest.raises(InvalidGrant):
        rt.classify_presented(TOKEN, FAMILY, FAMILY.absolute_expires_at, 10)  # absolute lifetime


def test_token_expiry_is_capped_by_family() -> None:
    assert rt.token_expiry(2000.0, 100, FAMILY) == 2100.0
    late = FAMILY.absolute_expires_at - 10
    assert rt.token_expiry(late, 100, FAMILY) == FAMILY.absolute_expires_at


def test_at_hash_oidc_example() -> None:
    # OIDC Core Appendix A.3 (ID token with at_hash): access token "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"
    assert (
        core.left_half_hash("jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y", "RS256")
        == "77QmUPtjPfzWtF2AnpK9RQ"
    )
    half = hashlib.sha384(b"t").digest()[:24]
    assert core.left_half_hash("t", "ES384") == jose.b64url_encode(half)


def test_id_token_claims() -> None:
    claims = core.id_token_claims(
        issuer="https://as",
        subject="u1",
        client_id="web",
        issued_at=1000,
        ttl=3600,
        auth_time=990.7,
        sid="s1",
        alg="RS256",
        nonce="n",
        access_token="at",
        extra={"iss": "ignored", "acr": "1"},
    )
    assert claims == {
        "iss": "https://as",
        "sub": "u1",
        "aud": "web",
        "exp": 4600,
        "iat": 1000,
        "auth_time": 990,
        "sid": "s1",
        "nonce": "n",
        "at_hash": core.left_half_hash("at", "RS256"),
        "acr": "1",
    }
    bare = core.id_token_claims(
        issuer="i", subject="s", client_id="c", issued_at=1, ttl=1, auth_time=1, sid="x", alg="ES256"
    )
    assert "nonce" not in bare
    assert "at_hash" not in bare


def test_userinfo_claims_follow_scope() -> None:
    user = User(user_id="u1", username="alice", password_hash="x", email="a@x", name="Alice", updated_at=5.5)
    assert userinfo_claims(user, ["openid"]) == {"sub": "u1"}
    assert userinfo_claims(user, ["openid", "profile", "email"]) == {
        "sub": "u1",
        "name": "Alice",
        "preferred_username": "alice",
        "updated_at": 5,
        "email": "a@x",
    }
    bare = User(user_id="u2", username="bob", password_hash="x")
    assert userinfo_claims(bare, ["openid", "profile", "email"]) == {"sub": "u2", "preferred_username": "bob"}
    with pytest.raises(InsufficientScope):
        userinfo_claims(user, ["profile"])


def test_discovery_is_consistent_with_rfc8414() -> None:
    issuer = "https://as.example"
    oauth = metadata(issuer, signing_algorithms=["ES256"], scopes=["orders:read"])
    oidc = discovery.openid_configuration(issuer, oauth, id_token_algorithms=["RS256"])
    for name, value in oauth.items():
        if isinstance(value, list):
            assert set(value) <= set(oidc[name]), name
        else:
            assert oidc[name] == value, name
    assert oidc["code_challenge_methods_supported"] == ["S256"]
    assert oidc["response_types_supported"] == ["code"]
    assert oidc["authorization_endpoint"] == f"{issuer}/authorize"
    assert oidc["authorization_response_iss_parameter_supported"] is True
    assert "RS256" in oidc["id_token_signing_alg_values_supported"]
    assert {"openid", "orders:read"} <= set(oidc["scopes_supported"])
    assert "implicit" not in oidc["grant_types_supported"]
    assert "password" not in oidc["grant_types_supported"]


def _signed(claims: dict[str, object], key: jose.PrivateKey, kid: str = "k1") -> str:
    return jose.encode_jwt("RS256", key, {"kid": kid, "typ": "JWT"}, claims)


@pytest.fixture(scope="module")
def rsa_key() -> jose.PrivateKey:
    return jose.generate_private_key("RS256")


def test_id_token_hint(rsa_key: jose.PrivateKey) -> None:
    keys = {"k1": jose.load_public_jwk(jose.public_jwk(rsa_key))}
    token = _signed({"iss": "https://as", "aud": "web", "sub": "u1", "exp": 1}, rsa_key)
    claims = logout.verify_id_token_hint(token, issuer="https://as", keys=keys, algorithms=("RS256",))
    assert claims["aud"] == "web"  # expired hints are accepted
    bad = [
        "not-a-jwt",
        _signed({"iss": "https://other", "aud": "web"}, rsa_key),
        _signed({"iss": "https://as", "aud": "web"}, rsa_key, kid="unknown"),
        _signed({"iss": "https://as", "aud": "web"}, jose.generate_private_key("RS256")),
        token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
    ]
    for hint in bad:
        with pytest.raises(InvalidRequest):
            logout.verify_id_token_hint(hint, issuer="https://as", keys=keys, algorithms=("RS256",))
    with pytest.raises(InvalidRequest):
        logout.verify_id_token_hint(token, issuer="https://as", keys=keys, algorithms=("ES256",))
    payload = jose.b64url_encode(orjson.dumps([1]))
    parts = token.split(".")
    with pytest.raises(InvalidRequest):
        logout.verify_id_token_hint(
            f"{parts[0]}.{payload}.{parts[2]}", issuer="https://as", keys=keys, algorithms=("RS256",)
        )


def test_logout_redirect_rules() -> None:
    request = logout.parse_end_session(
        {"client_id": "web", "post_logout_redirect_uri": "https://app.example/bye", "state": "s"}
    )
    assert logout.logout_redirect(request, CLIENT, None) == "https://app.example/bye?state=s"
    assert logout.logout_redirect(logout.parse_end_session({}), None, None) is None
    with pytest.raises(InvalidRequest):  # unregistered
        logout.logout_redirect(
            dataclasses.replace(request, post_logout_redirect_uri="https://evil.example/"), CLIENT, None
        )
    with pytest.raises(InvalidRequest):  # no client to check it against
        logout.logout_redirect(request, None, None)
    with pytest.raises(InvalidRequest):  # client_id and hint disagree
        logout.logout_redirect(request, CLIENT, "other")
