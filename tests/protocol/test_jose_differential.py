"""Differential test: our compact-JWS checks against joserfc's on generated and mutated tokens.

For every token, ``parse_compact`` + ``verify`` (with the allowlist and key-fit checks a caller
applies) and joserfc's ``jws.deserialize_compact`` with the same key and algorithms must agree.
The only tolerated disagreements are the ones documented in ``bastion.protocol.jose``'s module
docstring, and each of them is recognised here by a precise predicate, never by "ours rejected".
"""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from joserfc import jwk as joserfc_jwk
from joserfc import jws as joserfc_jws
from joserfc.jws import JWSRegistry

from bastion.protocol import jose

ALGS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
_RSA_KEY = jose.generate_private_key("RS256")
PRIVATE_KEYS: dict[str, jose.PrivateKey] = {
    "ES256": jose.generate_private_key("ES256"),
    "ES384": jose.generate_private_key("ES384"),
    "RS256": _RSA_KEY,
    "PS256": _RSA_KEY,
    "EdDSA": jose.generate_private_key("EdDSA"),
}
PUBLIC_JWKS = {alg: jose.public_jwk(key) for alg, key in PRIVATE_KEYS.items()}
#: Algorithm lists handed to both sides; HS256 and none are offered to joserfc too, so a swap
#: to them is refused by its key checks rather than by the allowlist alone.
ALLOWLISTS = (ALGS, ("ES256",), ("RS256", "PS256"), (*ALGS, "HS256", "none"))

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def ours(token: str, public: dict[str, str], algorithms: tuple[str, ...]) -> bool:
    """Our decision, made the way ``bastion.tokens`` makes it."""
    try:
        parsed = jose.parse_compact(token)
        key = jose.load_public_jwk(public)
    except jose.JOSEError:
        return False
    alg = parsed.header["alg"]
    if alg not in algorithms or alg not in jose.SUPPORTED_ALGORITHMS or not jose.key_fits_alg(key, alg):
        return False
    return jose.verify(alg, key, parsed.signing_input, parsed.signature)


def theirs(token: str, public: dict[str, str], algorithms: tuple[str, ...]) -> bool:
    """joserfc's decision; any exception is a rejection."""
    registry = JWSRegistry(algorithms=list(algorithms), strict_check_header=False)
    # Documented difference: we cap whole tokens (bastion.tokens), not the header segment.
    registry.max_header_length = 1 << 20
    key = joserfc_jwk.import_key(public)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            joserfc_jws.deserialize_compact(token, key, algorithms=list(algorithms), registry=registry)
        except Exception:
            return False
    return True


def _loose_b64decode(segment: str) -> bytes | None:
    try:
        raw = segment.encode("ascii")
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (UnicodeError, ValueError):
        return None


def documented_stricter(token: str) -> bool:
    """Whether ``token`` falls in a class we refuse on purpose while joserfc accepts it."""
    header_raw = _loose_b64decode(token.split(".")[0])
    if header_raw is None:
        return False
    try:
        header = json.loads(header_raw)
    except ValueError:
        return False
    if isinstance(header, dict) and ("crit" in header or "b64" in header):
        return True
    try:
        orjson.loads(header_raw)
    except orjson.JSONDecodeError:
        return True  # BOM, UTF-16/32, NaN, lone surrogates: json.loads accepts, orjson does not
    return False


def assert_agree(token: str, public: dict[str, str], algorithms: tuple[str, ...]) -> None:
    mine = ours(token, public, algorithms)
    other = theirs(token, public, algorithms)
    if mine == other:
        return
    assert not mine, f"we accepted what joserfc refused: {token!r}"
    assert documented_stricter(token), f"undocumented disagreement (joserfc accepts): {token!r}"


# -- generation -----------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
header_extras = st.dictionaries(
    st.sampled_from(["kid", "typ", "cty", "jku", "x5u", "x5c", "x5t", "jwk", "crit", "b64", "zip", "foo"]),
    json_values | st.just("https://attacker.example/jwks"),
    max_size=3,
)


def sign_raw(alg: str, header_json: bytes, payload: bytes) -> str:
    signing_input = (jose.b64url_encode(header_json) + "." + jose.b64url_encode(payload)).encode("ascii")
    signature = jose.sign(alg, PRIVATE_KEYS[alg], signing_input)
    return signing_input.decode("ascii") + "." + jose.b64url_encode(signature)


@st.composite
def signed_tokens(draw: st.DrawFn) -> tuple[str, str]:
    alg = draw(st.sampled_from(ALGS))
    header: dict[str, Any] = {"typ": "at+jwt", "kid": "k1", **draw(header_extras)}
    header["alg"] = alg
    claims = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
    return alg, sign_raw(alg, orjson.dumps(header), orjson.dumps(claims))


def _replace_char(segment: str, index: int, char: str) -> str:
    return segment[:index] + char + segment[index + 1 :]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str]:
    alg, token = draw(signed_tokens())
    head, payload, sig = token.split(".")
    kind = draw(
        st.sampled_from(
            [
                "identity",
                "flip",
                "pad",
                "non_canonical",
                "swap_alg",
                "zero_sig",
                "truncate",
                "dots",
                "unicode",
                "reencode",
                "empty_sig",
            ]
        )
    )
    if kind == "flip":
        which = draw(st.integers(0, 2))
        parts = [head, payload, sig]
        if parts[which]:
            index = draw(st.integers(0, len(parts[which]) - 1))
            parts[which] = _replace_char(parts[which], index, draw(st.sampled_from(B64_ALPHABET + "+/=!. ")))
        token = ".".join(parts)
    elif kind == "pad":
        which = draw(st.integers(0, 2))
        parts = [head, payload, sig]
        parts[which] += "=" * draw(st.integers(1, 3))
        token = ".".join(parts)
    elif kind == "non_canonical":
        parts = [head, payload, sig]
        which = draw(st.integers(0, 2))
        segment = parts[which]
        if len(segment) % 4 in (2, 3):
            last = B64_ALPHABET.index(segment[-1])
            unused = 4 if len(segment) % 4 == 2 else 2
            bump = draw(st.integers(1, (1 << unused) - 1))
            parts[which] = segment[:-1] + B64_ALPHABET[(last & ~((1 << unused) - 1)) | bump]
        token = ".".join(parts)
    elif kind == "swap_alg":
        new_alg = draw(st.sampled_from([*ALGS, "HS256", "none", "None", "NONE", "es256", "RS512"]))
        header = orjson.loads(jose.b64url_decode(head))
        header["alg"] = new_alg
        resign = draw(st.booleans()) and new_alg in ALGS
        if resign:
            token = sign_raw(new_alg, orjson.dumps(header), jose.b64url_decode(payload))
        else:
            token = jose.b64url_encode(orjson.dumps(header)) + "." + payload + "." + sig
    elif kind == "zero_sig":
        size = len(jose.b64url_decode(sig))
        pattern = draw(st.sampled_from(["zeros", "order", "r_zero"]))
        if pattern == "zeros" or alg not in ("ES256", "ES384"):
            raw = b"\0" * size
        else:
            half = size // 2
            order = jose._EC_ORDER[alg].to_bytes(half, "big")
            raw = order + order if pattern == "order" else b"\0" * half + jose.b64url_decode(sig)[half:]
        token = f"{head}.{payload}.{jose.b64url_encode(raw)}"
    elif kind == "truncate":
        token = f"{head}.{payload}.{sig[: draw(st.integers(0, max(0, len(sig) - 1)))]}"
    elif kind == "dots":
        index = draw(st.integers(0, len(token)))
        token = token[:index] + "." + token[index:]
    elif kind == "unicode":
        index = draw(st.integers(0, len(token)))
        token = (
            token[:index] + draw(st.sampled_from(["é", "\u0131", "\u2024", "\uff0e", "\x00"])) + token[index:]
        )
    elif kind == "reencode":
        header = orjson.loads(jose.b64url_decode(head))
        style = draw(st.sampled_from(["spaced", "ascii_escaped", "utf16", "bom", "sorted"]))
        if style == "spaced":
            raw = json.dumps(header, indent=1).encode()
        elif style == "ascii_escaped":
            raw = json.dumps(header, ensure_ascii=True).replace('"alg"', '"\\u0061lg"').encode()
        elif style == "utf16":
            raw = json.dumps(header).encode("utf-16")
        elif style == "bom":
            raw = b"\xef\xbb\xbf" + json.dumps(header).encode()
        else:
            raw = json.dumps(header, sort_keys=True).encode()
        if draw(st.booleans()):
            token = sign_raw(alg, raw, jose.b64url_decode(payload))
        else:
            token = jose.b64url_encode(raw) + "." + payload + "." + sig
    elif kind == "empty_sig":
        token = f"{head}.{payload}."
    return alg, token


DIFF_SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@DIFF_SETTINGS
@given(mutated(), st.sampled_from(ALLOWLISTS), st.sampled_from(ALGS))
def test_mutated_tokens_agree_with_joserfc(
    case: tuple[str, str], algorithms: tuple[str, ...], other_key_alg: str
) -> None:
    alg, token = case
    assert_agree(token, PUBLIC_JWKS[alg], algorithms)
    # The same token against a different key: key confusion must be refused by both.
    assert_agree(token, PUBLIC_JWKS[other_key_alg], algorithms)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_strings_agree_with_joserfc(text: str) -> None:
    assert_agree(text, PUBLIC_JWKS["ES256"], ALGS)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(ALGS))
def test_arbitrary_signed_headers_agree_with_joserfc(header_raw: bytes, alg: str) -> None:
    """Arbitrary bytes as the header, correctly signed: only the header rules decide."""
    assert_agree(sign_raw(alg, header_raw, b"{}"), PUBLIC_JWKS[alg], ALGS)


@pytest.mark.parametrize("alg", ALGS)
def test_well_formed_tokens_are_accepted_by_both(alg: str) -> None:
    token = jose.encode_jwt(alg, PRIVATE_KEYS[alg], {"typ": "at+jwt", "kid": "k1"}, {"sub": "alice"})
    assert ours(token, PUBLIC_JWKS[alg], ALGS)
    assert theirs(token, PUBLIC_JWKS[alg], ALGS)


@pytest.mark.parametrize("alg", ["ES256", "ES384"])
def test_zero_ecdsa_signature_is_refused_by_both(alg: str) -> None:
    """CVE-2022-21449: ``r = s = 0`` must never verify."""
    token = jose.encode_jwt(alg, PRIVATE_KEYS[alg], {}, {"sub": "alice"})
    head, payload, sig = token.split(".")
    zero = jose.b64url_encode(b"\0" * len(jose.b64url_decode(sig)))
    assert not ours(f"{head}.{payload}.{zero}", PUBLIC_JWKS[alg], ALGS)
    assert not theirs(f"{head}.{payload}.{zero}", PUBLIC_JWKS[alg], ALGS)


def test_crit_is_a_documented_difference() -> None:
    """joserfc accepts ``crit: ["b64"]`` with ``b64: false``; we implement no extension."""
    token = sign_raw("ES256", orjson.dumps({"alg": "ES256", "b64": False, "crit": ["b64"]}), b"{}")
    assert not ours(token, PUBLIC_JWKS["ES256"], ALGS)
    assert documented_stricter(token)
