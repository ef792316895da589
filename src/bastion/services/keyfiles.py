"""Private signing keys from files, for ``bastion keys import``: PEM or JWK, checked for their algorithm.

A deployment moving from another provider brings that provider's signing key along, so that
tokens it signed keep validating after the move. The key must be a private key: Bastion keeps
the private half of every key it publishes (sealed under the key-encryption key) and may sign
with it. What is accepted:

* PEM: PKCS#8 (``BEGIN PRIVATE KEY``) or the traditional forms (``BEGIN EC PRIVATE KEY``,
  ``BEGIN RSA PRIVATE KEY``), unencrypted;
* a private JWK (RFC 7517 §4, RFC 7518 §6: ``d`` and, for RSA, the CRT members all or none),
  or a JWK Set holding it.

The key must fit its algorithm (RFC 7518 §3.1): ES256 a P-256 key, ES384 a P-384 key, RS256
and PS256 an RSA key of at least 2048 bits (RFC 7518 §3.3: "A key of size 2048 bits or larger
MUST be used"), EdDSA an Ed25519 key (RFC 8037).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from typing import Final

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.protocol import jose

#: The formats :func:`read_private_key` reads.
FORMATS: Final = ("pem", "jwk")

_KID_RE: Final = re.compile(r"[\x21-\x7e]{1,128}")
_CURVE_ALGS: Final = {"secp256r1": "ES256", "secp384r1": "ES384"}
_RSA_MIN_BITS: Final = 2048
_RSA_CRT: Final = ("p", "q", "dp", "dq", "qi")
_SUPPORTED: Final = "signing keys are EC P-256 or P-384, RSA (2048 bits or more) or Ed25519"
_PUBLIC_ONLY: Final = (
    "{source} holds a public key only. Importing needs the private key (PEM: PKCS#8 or traditional; "
    'JWK: with "d"): Bastion keeps the private half of every key it publishes.'
)


class KeyFileError(ValueError):
    """A key that cannot be imported; the message says why (it never quotes key material)."""


@dataclass(frozen=True, slots=True)
class KeyFile:
    """A private key read from a file, with the ``kid`` and ``alg`` it will be published under."""

    private_key: jose.PrivateKey
    kid: str
    alg: str


def read_private_key(
    data: bytes,
    *,
    kid: str | None = None,
    alg: str | None = None,
    fmt: str | None = None,
    source: str = "the file",
) -> KeyFile:
    """Parse and check a private signing key.

    Args:
        data: the file's bytes.
        kid: the key id; required for PEM, which has none. A JWK's own ``kid`` must agree.
        alg: the JWS algorithm; when absent it comes from the JWK's ``alg`` or from the key
            type (an RSA key fits two algorithms, so it needs one).
        fmt: ``"pem"`` or ``"jwk"``; detected from the content when ``None``.
        source: how messages name the file.

    Raises:
        KeyFileError: the key is malformed, public only, unsupported, does not fit ``alg``,
            or the ``kid`` is missing or malformed.
    """
    if alg is not None and alg not in jose.SUPPORTED_ALGORITHMS:
        raise KeyFileError(
            f"unsupported algorithm {alg!r}: use one of {', '.join(jose.SUPPORTED_ALGORITHMS)}"
        )
    fmt = fmt or _detect(data, source)
    if fmt == "pem":
        key = _from_pem(data, source)
    elif fmt == "jwk":
        key, kid, alg = _from_jwk(data, kid, alg, source)
    else:
        raise KeyFileError(f"unknown key format {fmt!r}: use one of {', '.join(FORMATS)}")
    if kid is None:
        raise KeyFileError(
            f"{source} names no key id: pass --kid, the kid the tokens it signed carry in their header"
        )
    if not _KID_RE.fullmatch(kid):
        raise KeyFileError("a kid is 1 to 128 printable ASCII characters without spaces")
    alg = alg or _alg_of(key)
    _check_fits(key, alg)
    return KeyFile(private_key=key, kid=kid, alg=alg)


def _detect(data: bytes, source: str) -> str:
    text = data.lstrip()
    if text.startswith(b"{"):
        return "jwk"
    if b"-----BEGIN " in data:
        return "pem"
    raise KeyFileError(f"{source} is neither PEM nor a JWK (DER is not read: convert it with openssl pkey)")


def _from_pem(data: bytes, source: str) -> jose.PrivateKey:
    if b"PRIVATE KEY-----" not in data and (b"PUBLIC KEY-----" in data or b"CERTIFICATE-----" in data):
        raise KeyFileError(_PUBLIC_ONLY.format(source=source))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise KeyFileError(
            f"{source} is encrypted: decrypt it first (openssl pkey -in KEY.pem -out PLAIN.pem) and "
            "remove the plain copy once imported"
        ) from None
    except (ValueError, UnicodeError):
        raise KeyFileError(f"{source} holds no readable PEM private key (PKCS#8 or traditional)") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise KeyFileError(f"{source} holds a {type(key).__name__.removeprefix('_')} key: {_SUPPORTED}")
    return key


def _from_jwk(
    data: bytes, kid: str | None, alg: str | None, source: str
) -> tuple[jose.PrivateKey, str | None, str | None]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise KeyFileError(f"{source} is not valid JSON") from None
    if not isinstance(document, dict):
        raise KeyFileError(f"{source} is not a JWK (a JSON object)")
    jwk = _pick(document, kid, source)
    for member, wanted in (("kid", kid), ("alg", alg)):
        value = jwk.get(member)
        if value is not None and not isinstance(value, str):
            raise KeyFileError(f'the JWK\'s "{member}" is not a string')
        if value is not None and wanted is not None and value != wanted:
            raise KeyFileError(f'the JWK\'s "{member}" is {value!r}, not {wanted!r}')
    if jwk.get("use", "sig") != "sig":
        raise KeyFileError(f'the JWK\'s "use" is {jwk["use"]!r}: only signing keys ("sig") are imported')
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "sign" not in ops):
        raise KeyFileError('the JWK\'s "key_ops" does not allow "sign"')
    return _jwk_private_key(jwk, source), kid or jwk.get("kid"), alg or jwk.get("alg")


def _pick(document: dict[str, Any], kid: str | None, source: str) -> dict[str, Any]:
    """The JWK itself, or the one key of a JWK Set (RFC 7517 §5) that ``kid`` names."""
    if "keys" not in document:
        return document
    keys = [k for k in document["keys"] if isinstance(k, dict)] if isinstance(document["keys"], list) else []
    if kid is not None:
        keys = [k for k in keys if k.get("kid") == kid]
    if len(keys) != 1:
        raise KeyFileError(
            f"{source} is a JWK Set with {len(keys)} matching keys: name one with --kid"
            if kid is None
            else f"{source} is a JWK Set without a key whose kid is {kid!r}"
        )
    return keys[0]


def _b64int(jwk: dict[str, Any], member: str) -> int:
    return int.from_bytes(_b64(jwk, member), "big")


def _b64(jwk: dict[str, Any], member: str) -> bytes:
    value = jwk.get(member)
    if not isinstance(value, str):
        raise KeyFileError(f'the JWK lacks "{member}"')
    try:
        return jose.b64url_decode(value)
    except jose.JOSEError:
        raise KeyFileError(f'the JWK\'s "{member}" is not base64url') from None


def _jwk_private_key(jwk: dict[str, Any], source: str) -> jose.PrivateKey:
    kty = jwk.get("kty")
    if kty == "oct":
        raise KeyFileError("symmetric (oct) keys are never imported: Bastion signs with asymmetric keys only")
    if "d" not in jwk:
        raise KeyFileError(_PUBLIC_ONLY.format(source=source))
    public_members = {"EC": ("crv", "x", "y"), "RSA": ("n", "e"), "OKP": ("crv", "x")}.get(str(kty))
    if public_members is None:
        raise KeyFileError(f"unsupported key type {kty!r}: {_SUPPORTED}")
    try:
        # The public half is checked exactly as a published JWK is (full-size coordinates, RSA size).
        public = jose.load_public_jwk({"kty": kty, **{m: jwk.get(m) for m in public_members}})
    except jose.JOSEError as exc:
        raise KeyFileError(f"the JWK's public members are not a usable key: {exc}") from None
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            size = (public.curve.key_size + 7) // 8
            d = _b64(jwk, "d")
            # RFC 7518 §6.2.2.1: "MUST be ceiling(log-base-2(n)/8) octets".
            if len(d) != size:
                raise KeyFileError('the JWK\'s "d" is not the full size of its curve')
            private: jose.PrivateKey = ec.EllipticCurvePrivateNumbers(
                int.from_bytes(d, "big"), public.public_numbers()
            ).private_key()
        elif isinstance(public, rsa.RSAPublicKey):
            if "oth" in jwk:
                raise KeyFileError("multi-prime RSA keys (oth) are not supported")
            private = _rsa_private_key(jwk, public.public_numbers())
        else:
            private = ed25519.Ed25519PrivateKey.from_private_bytes(_b64(jwk, "d"))
    except ValueError as exc:
        if isinstance(exc, KeyFileError):
            raise
        raise KeyFileError("the JWK's private members do not form a valid key") from None
    if jose.public_jwk(private) != jose.public_jwk(public):
        raise KeyFileError("the JWK's private key does not match its public members")
    return private


def _rsa_private_key(jwk: dict[str, Any], public: rsa.RSAPublicNumbers) -> rsa.RSAPrivateKey:
    d = _b64int(jwk, "d")
    present = [m for m in _RSA_CRT if m in jwk]
    if present and len(present) != len(_RSA_CRT):
        # RFC 7518 §6.3.2: "If the producer includes any of the other private key parameters,
        # then all of the others MUST be present".
        raise KeyFileError(f"the RSA JWK has {', '.join(present)} but not all of {', '.join(_RSA_CRT)}")
    if present:
        p, q, dp, dq, qi = (_b64int(jwk, m) for m in _RSA_CRT)
    else:
        p, q = rsa.rsa_recover_prime_factors(public.n, public.e, d)
        dp, dq, qi = rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q)
    return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, public).private_key()


def _alg_of(key: jose.PrivateKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = _CURVE_ALGS.get(key.curve.name)
        if alg is None:
            raise KeyFileError(f"unsupported curve {key.curve.name}: {_SUPPORTED}")
        return alg
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise KeyFileError("an RSA key signs RS256 or PS256: say which with --alg")


def _check_fits(key: jose.PrivateKey, alg: str) -> None:
    """RFC 7518 §3.1: the key type and size the algorithm needs."""
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < _RSA_MIN_BITS:
        raise KeyFileError(
            f"RSA keys shorter than {_RSA_MIN_BITS} bits are refused (this one has {key.key_size})"
        )
    if not jose.key_fits_alg(key.public_key(), alg):
        wanted = {
            "ES256": "an EC P-256 key",
            "ES384": "an EC P-384 key",
            "RS256": "an RSA key",
            "PS256": "an RSA key",
            "EdDSA": "an Ed25519 key",
        }[alg]
        raise KeyFileError(f"{alg} needs {wanted}; this is {_describe(key)}")


def _describe(key: jose.PrivateKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC {key.curve.name} key"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA {key.key_size}-bit key"
    return "an Ed25519 key"
