"""Key sets, key selection, and metadata locations: pure rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bastion.protocol import jose
from bastion.tokens import KeySet
from bastion.tokens import UnknownKey
from bastion.tokens import VerificationKey
from bastion.tokens._http import metadata_urls

EC = jose.generate_private_key("ES256")
RSA = jose.generate_private_key("RS256")


def test_select_by_kid_and_alg() -> None:
    keys = KeySet.from_keys({"ec": EC, "rsa": RSA})
    assert keys.select("ec", "ES256") is keys.with_kid("ec")[0]
    assert keys.select("missing", "ES256") is None
    with pytest.raises(UnknownKey) as info:
        keys.select("ec", "RS256")
    assert info.value.reason == "key_mismatch"
    with pytest.raises(UnknownKey) as info:
        keys.select(None, "ES256")
    assert info.value.reason == "kid_required"


def test_single_key_without_kid() -> None:
    keys = KeySet([VerificationKey.from_key(EC)])
    assert keys.select(None, "ES256") is keys.keys[0]
    assert keys.select("anything", "ES256") is None
    with pytest.raises(UnknownKey):
        keys.select(None, "ES384")  # P-256 key, P-384 alg


def test_duplicate_kid_is_ambiguous() -> None:
    other = jose.generate_private_key("ES256")
    keys = KeySet([VerificationKey.from_key(EC, "k"), VerificationKey.from_key(other, "k")])
    with pytest.raises(UnknownKey) as info:
        keys.select("k", "ES256")
    assert info.value.reason == "ambiguous_kid"


def test_thumbprint_identifies_material_not_kid() -> None:
    assert (
        VerificationKey.from_key(EC, "a").thumbprint
        == VerificationKey.from_key(EC.public_key(), "b").thumbprint
    )
    assert VerificationKey.from_key(EC, "a").thumbprint != VerificationKey.from_key(RSA, "a").thumbprint


def test_from_jwks_skips_unusable_keys() -> None:
    good = {**jose.public_jwk(EC), "kid": "good"}
    jwks: dict[str, Any] = {
        "keys": [
            good,
            {**good, "kid": "enc", "use": "enc"},
            {**good, "kid": 5},
            {**good, "kid": "private", "d": "AAAA"},
            {"kty": "RSA", "kid": "short", "n": jose.b64url_encode(b"\xff" * 128), "e": "AQAB"},
            {"kty": "oct", "k": "AAAA"},
            "not an object",
        ]
    }
    keys = KeySet.from_jwks(jwks)
    assert [key.kid for key in keys] == ["good"]
    with pytest.raises(ValueError):
        KeySet.from_jwks({"keys": "nope"})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)
jwk_like = st.fixed_dictionaries(
    {},
    optional={
        "kty": st.sampled_from(["EC", "RSA", "OKP", "oct"]) | json_values,
        "crv": st.sampled_from(["P-256", "P-384", "Ed25519"]) | json_values,
        "x": st.just(jose.public_jwk(EC)["x"]) | json_values,
        "y": st.just(jose.public_jwk(EC)["y"]) | json_values,
        "n": json_values,
        "e": json_values,
        "kid": json_values,
        "use": json_values,
        "key_ops": json_values,
        "alg": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(jwk_like | json_values, max_size=4))
def test_from_jwks_never_fails_on_odd_members(keys: list[Any]) -> None:
    parsed = KeySet.from_jwks({"keys": keys})
    assert len(parsed) <= len(keys)


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        (
            "https://auth.example",
            [
                "https://auth.example/.well-known/oauth-authorization-server",
                "https://auth.example/.well-known/openid-configuration",
            ],
        ),
        (
            "https://auth.example/tenant/1",
            [
                "https://auth.example/.well-known/oauth-authorization-server/tenant/1",
                "https://auth.example/tenant/1/.well-known/oauth-authorization-server",
                "https://auth.example/tenant/1/.well-known/openid-configuration",
            ],
        ),
    ],
)
def test_metadata_urls(issuer: str, expected: list[str]) -> None:
    """RFC 8414 §3.1 inserts the well-known segment; OIDC Discovery appends it."""
    assert metadata_urls(issuer) == expected
