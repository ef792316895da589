"""Reading private keys for ``bastion keys import``: PEM and JWK, checked against their algorithm."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed448
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey
from joserfc.jwk import OKPKey
from joserfc.jwk import RSAKey

from bastion.protocol import jose
from bastion.services.keyfiles import KeyFileError
from bastion.services.keyfiles import read_private_key

P256 = ec.generate_private_key(ec.SECP256R1())
RSA2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> bytes:
    data: bytes = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return data


def same_key(a: jose.PrivateKey, b: Any) -> bool:
    return jose.public_jwk(a) == jose.public_jwk(b)


@pytest.mark.parametrize(
    ("key", "fmt", "alg"),
    [
        (P256, serialization.PrivateFormat.PKCS8, "ES256"),
        (P256, serialization.PrivateFormat.TraditionalOpenSSL, "ES256"),
        (ec.generate_private_key(ec.SECP384R1()), serialization.PrivateFormat.PKCS8, "ES384"),
        (ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.PKCS8, "EdDSA"),
    ],
    ids=["p256-pkcs8", "p256-traditional", "p384", "ed25519"],
)
def test_pem_keys_with_their_algorithm_inferred(key: Any, fmt: serialization.PrivateFormat, alg: str) -> None:
    found = read_private_key(pem(key, fmt), kid="k1")
    assert found.kid == "k1"
    assert found.alg == alg
    assert same_key(found.private_key, key)


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_an_rsa_pem_key_needs_its_algorithm(alg: str) -> None:
    traditional = pem(RSA2048, serialization.PrivateFormat.TraditionalOpenSSL)
    assert b"BEGIN RSA PRIVATE KEY" in traditional
    with pytest.raises(KeyFileError, match="an RSA key signs RS256 or PS256: say which with --alg"):
        read_private_key(traditional, kid="r")
    found = read_private_key(traditional, kid="r", alg=alg)
    assert found.alg == alg
    assert same_key(found.private_key, RSA2048)


def test_pem_needs_a_kid() -> None:
    with pytest.raises(KeyFileError, match="names no key id: pass --kid"):
        read_private_key(pem(P256))


@pytest.mark.parametrize("kid", ["", "has space", "x" * 129, "é"])
def test_a_malformed_kid_is_refused(kid: str) -> None:
    with pytest.raises(KeyFileError, match="1 to 128 printable ASCII characters"):
        read_private_key(pem(P256), kid=kid)


@pytest.mark.parametrize(
    ("key", "alg", "message"),
    [
        (P256, "ES384", "ES384 needs an EC P-384 key; this is an EC secp256r1 key"),
        (P256, "RS256", "RS256 needs an RSA key; this is an EC secp256r1 key"),
        (RSA2048, "ES256", "ES256 needs an EC P-256 key; this is an RSA 2048-bit key"),
        (RSA2048, "EdDSA", "EdDSA needs an Ed25519 key; this is an RSA 2048-bit key"),
        (
            ed25519.Ed25519PrivateKey.generate(),
            "ES256",
            "ES256 needs an EC P-256 key; this is an Ed25519 key",
        ),
    ],
)
def test_a_key_must_fit_its_algorithm(key: Any, alg: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=message):
        read_private_key(pem(key), kid="k", alg=alg)


def test_short_rsa_keys_and_other_curves_are_refused() -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(KeyFileError, match="RSA keys shorter than 2048 bits are refused"):
        read_private_key(pem(short), kid="k", alg="RS256")
    with pytest.raises(KeyFileError, match="unsupported curve secp256k1"):
        read_private_key(pem(ec.generate_private_key(ec.SECP256K1())), kid="k")
    with pytest.raises(KeyFileError, match="Ed448PrivateKey key: signing keys are EC P-256"):
        read_private_key(pem(ed448.Ed448PrivateKey.generate()), kid="k")


def test_public_keys_are_refused_with_a_clear_message() -> None:
    public_pem = P256.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for data in (public_pem, orjson.dumps({**jose.public_jwk(P256), "kid": "k"})):
        with pytest.raises(KeyFileError, match=r"holds a public key only\. Importing needs the private key"):
            read_private_key(data, kid="k", source="pub.key")


def test_encrypted_pem_is_refused_with_the_way_out() -> None:
    encrypted = P256.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(KeyFileError, match=r"is encrypted: decrypt it first \(openssl pkey"):
        read_private_key(encrypted, kid="k")


def test_unreadable_input_is_refused() -> None:
    with pytest.raises(KeyFileError, match="neither PEM nor a JWK"):
        read_private_key(b"\x30\x82\x01", kid="k")
    with pytest.raises(KeyFileError, match="no readable PEM private key"):
        read_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", kid="k")
    with pytest.raises(KeyFileError, match="is not valid JSON"):
        read_private_key(b"{nope", kid="k")
    with pytest.raises(KeyFileError, match="unsupported algorithm 'HS256'"):
        read_private_key(pem(P256), kid="k", alg="HS256")


@pytest.mark.parametrize(
    ("jwk", "alg"),
    [
        (ECKey.generate_key("P-256", private=True), "ES256"),
        (ECKey.generate_key("P-384", private=True), "ES384"),
        (RSAKey.generate_key(2048, private=True), "PS256"),
        (OKPKey.generate_key("Ed25519", private=True), "EdDSA"),
    ],
    ids=["p256", "p384", "rsa", "ed25519"],
)
def test_private_jwks_from_another_library(jwk: Any, alg: str) -> None:
    document = {**jwk.as_dict(private=True), "kid": "theirs", "alg": alg, "use": "sig"}
    found = read_private_key(orjson.dumps(document))
    assert (found.kid, found.alg) == ("theirs", alg)
    assert same_key(found.private_key, jwk.private_key)
    # The signature the key makes verifies with the public half another library computes.
    token = jose.encode_jwt(alg, found.private_key, {"kid": "theirs"}, {"sub": "x"})
    parsed = jose.parse_compact(token)
    public = jose.load_public_jwk(jwk.as_dict(private=False))
    assert jose.verify(alg, public, parsed.signing_input, parsed.signature)


def test_an_rsa_jwk_without_crt_members_is_completed() -> None:
    full = RSAKey.generate_key(2048, private=True).as_dict(private=True)
    minimal = {name: full[name] for name in ("kty", "n", "e", "d")}
    found = read_private_key(orjson.dumps(minimal), kid="r", alg="RS256")
    assert jose.public_jwk(found.private_key) == {"kty": "RSA", "n": full["n"], "e": full["e"]}
    partial = {**minimal, "p": full["p"]}
    with pytest.raises(KeyFileError, match="has p but not all of p, q, dp, dq, qi"):
        read_private_key(orjson.dumps(partial), kid="r", alg="RS256")


def test_jwk_members_must_agree_with_the_options() -> None:
    document = {**ECKey.generate_key("P-256", private=True).as_dict(private=True), "kid": "a", "alg": "ES256"}
    data = orjson.dumps(document)
    with pytest.raises(KeyFileError, match="the JWK's \"kid\" is 'a', not 'b'"):
        read_private_key(data, kid="b")
    with pytest.raises(KeyFileError, match="the JWK's \"alg\" is 'ES256', not 'ES384'"):
        read_private_key(data, alg="ES384")
    assert read_private_key(data, kid="a", alg="ES256").kid == "a"
    with pytest.raises(KeyFileError, match='only signing keys \\("sig"\\)'):
        read_private_key(orjson.dumps({**document, "use": "enc"}))
    with pytest.raises(KeyFileError, match='"key_ops" does not allow "sign"'):
        read_private_key(orjson.dumps({**document, "key_ops": ["verify"]}))
    no_kid = {k: v for k, v in document.items() if k != "kid"}
    with pytest.raises(KeyFileError, match="names no key id"):
        read_private_key(orjson.dumps(no_kid))
    assert read_private_key(orjson.dumps(no_kid), kid="given").kid == "given"


def test_a_jwk_whose_halves_disagree_is_refused() -> None:
    mine = ECKey.generate_key("P-256", private=True).as_dict(private=True)
    other = ECKey.generate_key("P-256", private=True).as_dict(private=True)
    with pytest.raises(KeyFileError, match="private members do not form a valid key"):
        read_private_key(orjson.dumps({**mine, "d": other["d"]}), kid="k")
    okp = OKPKey.generate_key("Ed25519", private=True).as_dict(private=True)
    okp_other = OKPKey.generate_key("Ed25519", private=True).as_dict(private=True)
    with pytest.raises(KeyFileError, match="does not match its public members"):
        read_private_key(orjson.dumps({**okp, "d": okp_other["d"]}), kid="k")


def test_symmetric_and_unknown_jwks_are_refused() -> None:
    with pytest.raises(KeyFileError, match=r"symmetric \(oct\) keys are never imported"):
        read_private_key(b'{"kty": "oct", "k": "c2VjcmV0"}', kid="k")
    with pytest.raises(KeyFileError, match="unsupported key type 'XYZ'"):
        read_private_key(b'{"kty": "XYZ", "d": "AA"}', kid="k")
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    numbers = key.private_numbers()
    short = {
        "kty": "RSA",
        "n": jose.b64url_encode(numbers.public_numbers.n.to_bytes(128, "big")),
        "e": "AQAB",
        "d": jose.b64url_encode(numbers.d.to_bytes(128, "big")),
    }
    with pytest.raises(KeyFileError, match="RSA keys shorter than 2048 bits are refused"):
        read_private_key(orjson.dumps(short), kid="k", alg="RS256")


def test_a_key_is_picked_from_a_jwk_set_by_kid() -> None:
    a = {**ECKey.generate_key("P-256", private=True).as_dict(private=True), "kid": "a"}
    b = {**ECKey.generate_key("P-256", private=True).as_dict(private=True), "kid": "b"}
    data = orjson.dumps({"keys": [a, b]})
    assert read_private_key(data, kid="b").kid == "b"
    with pytest.raises(KeyFileError, match="is a JWK Set with 2 matching keys: name one with --kid"):
        read_private_key(data)
    with pytest.raises(KeyFileError, match="is a JWK Set without a key whose kid is 'c'"):
        read_private_key(data, kid="c")
    assert read_private_key(orjson.dumps({"keys": [a]})).kid == "a"
