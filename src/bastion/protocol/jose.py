"""A thin JWS layer over ``cryptography``: the only module that touches JOSE.

Signing and verifying access tokens is the hot path of the token endpoint and of every
validator, so compact JWS is produced and checked here with ``cryptography`` directly
(RFC 7515 §3.1 compact serialization, RFC 7518 §3 algorithms). Everything is strict:

* base64url must be unpadded and canonical (RFC 7515 §2: "with all trailing '=' characters
  omitted"); any other alphabet, padding or non-canonical trailing bits is refused;
* the header must be a UTF-8 JSON object (no BOM, no NaN, no lone surrogates) with a string
  ``alg``; registered header parameters must have their registered JSON types (RFC 7515 §4.1);
* ``crit`` is refused whatever it lists: we implement no extension, and RFC 7515 §4.1.11 says
  recipients "MUST reject the JWS" when they do not understand a listed one; ``b64`` (RFC 7797
  unencoded payloads) is refused too, since we never produce or expect it;
* ECDSA signatures must be exactly ``2 * coordinate size`` bytes with ``0 < r, s < n``
  (CVE-2022-21449 accepted ``r = s = 0``).

``tests/protocol/test_jose_differential.py`` checks every accept and reject against joserfc.
Deliberate differences, all of them stricter here unless said otherwise:

* ``crit`` and ``b64`` are refused (joserfc accepts ``crit: ["b64"]`` with ``b64: false``);
* RSA keys under 2048 bits are refused (:func:`load_public_jwk` and :func:`verify`);
* headers are parsed with orjson: UTF-16/32 or BOM-prefixed headers, ``NaN`` and lone
  surrogates are refused (``json.loads`` accepts them);
* laxer: unregistered header parameters are accepted (RFC 7515 §4: they are ignored unless
  listed in ``crit``), whereas joserfc's default registry refuses them; and no per-segment size
  caps here (joserfc caps the header at 512 bytes): :mod:`bastion.tokens` caps whole tokens.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any
from typing import Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

#: Asymmetric algorithms Bastion signs and verifies with. ``none`` and HMAC are never here.
SUPPORTED_ALGORITHMS: Final = ("ES256", "ES384", "RS256", "PS256", "EdDSA")

_EC_CURVES: Final[dict[str, tuple[type[ec.EllipticCurve], str, int, hashes.HashAlgorithm]]] = {
    "ES256": (ec.SECP256R1, "P-256", 32, hashes.SHA256()),
    "ES384": (ec.SECP384R1, "P-384", 48, hashes.SHA384()),
}
_EC_ORDER: Final = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
}
_B64URL_RE: Final = re.compile(rb"[A-Za-z0-9_-]*")
_RSA_MIN_BITS: Final = 2048


class JOSEError(ValueError):
    """A token or key that is not well-formed JOSE. The message is safe to log."""


class CriticalHeaderError(JOSEError):
    """The header carries ``crit``, which we never understand (RFC 7515 §4.1.11)."""


def _ascii(data: str | bytes) -> bytes:
    if isinstance(data, bytes):
        return data
    if not isinstance(data, str):
        raise JOSEError("expected a string")
    try:
        return data.encode("ascii", "strict")
    except UnicodeEncodeError as exc:
        raise JOSEError("non-ASCII characters") from exc


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


#: Registered JWS header parameters (RFC 7515 §4.1) and the JSON type each must have.
_HEADER_TYPES: Final = {
    "kid": _is_str,
    "typ": _is_str,
    "cty": _is_str,
    "x5t": _is_str,
    "x5t#S256": _is_str,
    "jku": _is_url,
    "x5u": _is_url,
    "x5c": _is_str_list,
    "jwk": _is_object,
}


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(data: str | bytes) -> bytes:
    """Strict unpadded base64url decode.

    Raises:
        JOSEError: on padding, characters outside the URL-safe alphabet, a length of 1 mod 4,
            or non-zero unused trailing bits (a non-canonical encoding).
    """
    raw = _ascii(data)
    if not _B64URL_RE.fullmatch(raw) or len(raw) % 4 == 1:
        raise JOSEError("invalid base64url")
    try:
        out = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex already guards
        raise JOSEError("invalid base64url") from exc
    if base64.urlsafe_b64encode(out).rstrip(b"=") != raw:
        raise JOSEError("non-canonical base64url")
    return out


@dataclass(frozen=True, slots=True)
class CompactJWS:
    """A parsed, not yet verified, compact JWS."""

    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes


def parse_compact(token: str | bytes) -> CompactJWS:
    """Split and decode a compact JWS without verifying it.

    Raises:
        CriticalHeaderError: the header carries ``crit``.
        JOSEError: unless the token is three strict base64url parts whose header is a JSON
            object with a string ``alg`` and well-typed registered parameters.
    """
    parts = _ascii(token).split(b".")
    if len(parts) != 3:
        raise JOSEError("a JWS has three parts")
    header_b64, payload_b64, sig_b64 = parts
    try:
        header = orjson.loads(b64url_decode(header_b64))
    except orjson.JSONDecodeError as exc:
        raise JOSEError("header is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise JOSEError("header must be an object with a string alg")
    if "crit" in header:
        # RFC 7515 §4.1.11: "If any of the listed extension Header Parameters are not
        # understood and supported by the recipient, then the JWS is invalid."
        raise CriticalHeaderError("crit header parameters are not supported")
    if "b64" in header:
        raise JOSEError("unencoded payloads (RFC 7797) are not supported")
    for name, valid in _HEADER_TYPES.items():
        if name in header and not valid(header[name]):
            raise JOSEError(f"header parameter {name} has the wrong type")
    return CompactJWS(
        header=header,
        payload=b64url_decode(payload_b64),
        signing_input=header_b64 + b"." + payload_b64,
        signature=b64url_decode(sig_b64),
    )


def generate_private_key(alg: str) -> PrivateKey:
    """A fresh private key suited to ``alg``."""
    if alg in _EC_CURVES:
        return ec.generate_private_key(_EC_CURVES[alg][0]())
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise JOSEError(f"unsupported algorithm {alg!r}")


# Algorithm objects are immutable: build them once, not per signature (the token endpoint's
# hot path signs every response).
_ECDSA: Final = {alg: ec.ECDSA(spec[3]) for alg, spec in _EC_CURVES.items()}
_SHA256: Final = hashes.SHA256()
_PKCS1: Final = padding.PKCS1v15()
_PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def sign(alg: str, key: PrivateKey, signing_input: bytes) -> bytes:
    """The JWS signature of ``signing_input`` (ECDSA in the raw ``r || s`` form)."""
    if alg in _EC_CURVES and isinstance(key, ec.EllipticCurvePrivateKey):
        size = _EC_CURVES[alg][2]
        r, s = decode_dss_signature(key.sign(signing_input, _ECDSA[alg]))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg == "RS256" and isinstance(key, rsa.RSAPrivateKey):
        return key.sign(signing_input, _PKCS1, _SHA256)
    if alg == "PS256" and isinstance(key, rsa.RSAPrivateKey):
        return key.sign(signing_input, _PSS, _SHA256)
    if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(signing_input)
    raise JOSEError(f"key does not fit algorithm {alg!r}")


def verify(alg: str, key: PublicKey, signing_input: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid ``alg`` signature by ``key``; never raises on bad input."""
    try:
        if alg in _EC_CURVES and isinstance(key, ec.EllipticCurvePublicKey):
            curve, _, size, digest = _EC_CURVES[alg]
            if not isinstance(key.curve, curve) or len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            order = _EC_ORDER[alg]
            if not (0 < r < order and 0 < s < order):
                return False
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(digest))
            return True
        if alg in ("RS256", "PS256") and isinstance(key, rsa.RSAPublicKey):
            if key.key_size < _RSA_MIN_BITS:
                return False
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if alg == "RS256"
                else padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            )
            key.verify(signature, signing_input, pad, hashes.SHA256())
            return True
        if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, signing_input)
            return True
    except InvalidSignature:
        return False
    return False


def encode_jwt(alg: str, key: PrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Sign ``claims`` as a compact JWS with ``header`` (whose ``alg`` is set to ``alg``)."""
    header = {**header, "alg": alg}
    signing_input = (b64url_encode(orjson.dumps(header)) + "." + b64url_encode(orjson.dumps(claims))).encode(
        "ascii"
    )
    return signing_input.decode("ascii") + "." + b64url_encode(sign(alg, key, signing_input))


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(size, "big"))


def public_jwk(key: PrivateKey | PublicKey) -> dict[str, str]:
    """The public JWK (RFC 7517) of ``key``: never a private member."""
    pub: PublicKey = key.public_key() if not isinstance(key, PublicKey) else key  # type: ignore[union-attr,arg-type]
    if isinstance(pub, ec.EllipticCurvePublicKey):
        nums = pub.public_numbers()
        crv, size = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48)}[pub.curve.name]
        return {"kty": "EC", "crv": crv, "x": _int_b64(nums.x, size), "y": _int_b64(nums.y, size)}
    if isinstance(pub, rsa.RSAPublicKey):
        rnums = pub.public_numbers()
        return {"kty": "RSA", "n": _int_b64(rnums.n), "e": _int_b64(rnums.e)}
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    raise JOSEError("unsupported key type")  # pragma: no cover


def load_public_jwk(jwk: dict[str, Any]) -> PublicKey:
    """A public key from a JWK; refuses private members, unknown types and weak RSA.

    Raises:
        JOSEError: the JWK is not a usable public key.
    """
    if any(member in jwk for member in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise JOSEError("a public JWK must not carry private members")
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            curve = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}.get(jwk.get("crv", ""))
            if curve is None:
                raise JOSEError("unsupported curve")
            size = 32 if curve is ec.SECP256R1 else 48
            x_raw = b64url_decode(jwk["x"])
            y_raw = b64url_decode(jwk["y"])
            # RFC 7518 §6.2.1.2: the coordinates "MUST be the full size of a coordinate".
            if len(x_raw) != size or len(y_raw) != size:
                raise JOSEError("EC coordinates must be full size")
            x = int.from_bytes(x_raw, "big")
            y = int.from_bytes(y_raw, "big")
            return ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
        if kty == "RSA":
            n = int.from_bytes(b64url_decode(jwk["n"]), "big")
            e = int.from_bytes(b64url_decode(jwk["e"]), "big")
            if n.bit_length() < _RSA_MIN_BITS:
                raise JOSEError("RSA keys shorter than 2048 bits are refused")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, JOSEError):
            raise
        raise JOSEError("malformed JWK") from exc
    raise JOSEError(f"unsupported key type {kty!r}")


def key_fits_alg(key: PublicKey, alg: str) -> bool:
    """Whether ``key`` may verify ``alg`` signatures (no algorithm confusion)."""
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[alg][0])
    if alg in ("RS256", "PS256"):
        return isinstance(key, rsa.RSAPublicKey)
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey)
    return False


def private_key_to_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM; callers encrypt it before it touches storage."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_key_from_pem(pem: bytes) -> PrivateKey:
    """The inverse of :func:`private_key_to_pem`."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise JOSEError("unsupported private key type")
    return key


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), used as a key id."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    digest = hashes.Hash(hashes.SHA256())
    digest.update(orjson.dumps(members, option=orjson.OPT_SORT_KEYS))
    return b64url_encode(digest.finalize())
