"""Unit tests for the strict compact-JWS layer."""

from __future__ import annotations

import orjson
import pytest

from bastion.protocol import jose


def _signed(header: dict[str, object], alg: str = "ES256") -> str:
    key = jose.generate_private_key(alg)
    signing_input = jose.b64url_encode(orjson.dumps(header)) + "." + jose.b64url_encode(b"{}")
    return signing_input + "." + jose.b64url_encode(jose.sign(alg, key, signing_input.encode()))


@pytest.mark.parametrize("value", ["YQ=", "YQ==", "Y+E", "Y/E", "YR", "Y", "YQ\n", "YQ ", "\u00e9Q"])
def test_b64url_decode_refuses_non_strict_input(value: str) -> None:
    with pytest.raises(jose.JOSEError):
        jose.b64url_decode(value)


def test_b64url_round_trip() -> None:
    for size in range(10):
        data = bytes(range(size))
        assert jose.b64url_decode(jose.b64url_encode(data)) == data


@pytest.mark.parametrize("token", ["a.b", "a.b.c.d", "é.e30.", "\x00.e30.", "e30.e30.", 123])
def test_parse_compact_refuses_malformed(token: object) -> None:
    with pytest.raises(jose.JOSEError):
        jose.parse_compact(token)  # type: ignore[arg-type]


def test_parse_compact_refuses_crit_with_its_own_error() -> None:
    with pytest.raises(jose.CriticalHeaderError):
        jose.parse_compact(_signed({"alg": "ES256", "crit": ["exp"], "exp": 1}))
    with pytest.raises(jose.CriticalHeaderError):
        jose.parse_compact(_signed({"alg": "ES256", "crit": []}))


@pytest.mark.parametrize(
    "extra",
    [{"kid": 1}, {"typ": None}, {"jku": "file:///etc/passwd"}, {"x5c": "abc"}, {"jwk": []}, {"b64": True}],
)
def test_parse_compact_checks_registered_header_types(extra: dict[str, object]) -> None:
    with pytest.raises(jose.JOSEError):
        jose.parse_compact(_signed({"alg": "ES256", **extra}))


def test_parse_compact_keeps_unregistered_parameters() -> None:
    parsed = jose.parse_compact(_signed({"alg": "ES256", "nonce": "x"}))
    assert parsed.header == {"alg": "ES256", "nonce": "x"}


@pytest.mark.parametrize("alg", jose.SUPPORTED_ALGORITHMS)
def test_sign_verify_round_trip_and_key_fit(alg: str) -> None:
    key = jose.generate_private_key(alg)
    token = jose.encode_jwt(alg, key, {"kid": "k"}, {"sub": "a"})
    parsed = jose.parse_compact(token)
    public = jose.load_public_jwk(jose.public_jwk(key))
    assert jose.key_fits_alg(public, alg)
    assert jose.verify(alg, public, parsed.signing_input, parsed.signature)
    assert not jose.verify(alg, public, parsed.signing_input + b"x", parsed.signature)
    assert not jose.key_fits_alg(public, "HS256")


def test_zero_ecdsa_signature_never_verifies() -> None:
    key = jose.generate_private_key("ES256")
    public = key.public_key()
    assert not jose.verify("ES256", public, b"msg", b"\0" * 64)


def test_load_public_jwk_refuses_private_and_short_members() -> None:
    ec_jwk = jose.public_jwk(jose.generate_private_key("ES256"))
    with pytest.raises(jose.JOSEError):
        jose.load_public_jwk({**ec_jwk, "d": "AA"})
    with pytest.raises(jose.JOSEError):
        jose.load_public_jwk({**ec_jwk, "x": ec_jwk["x"][2:]})
    with pytest.raises(jose.JOSEError):
        jose.load_public_jwk({**ec_jwk, "x": 5})
    with pytest.raises(jose.JOSEError):
        jose.load_public_jwk({"kty": "oct", "k": "AAAA"})
