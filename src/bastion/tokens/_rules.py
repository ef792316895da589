"""The JWT access-token rules, pure: bytes, settings and ``now`` in, a decision out.

RFC 9068 §4 ("Validating JWT Access Tokens") and RFC 8725 (JWT BCP), check by check:

==========================  ===========================================  =====================
check                       source                                       error
==========================  ===========================================  =====================
size before parsing         denial-of-service bound                      TokenTooLarge
compact JWS, strict b64     RFC 7515 §7.1, via ``protocol.jose``         MalformedToken
``crit`` refused            RFC 7515 §4.1.11                             UnsupportedHeader
``alg`` allowlisted         RFC 8725 §3.1, RFC 9068 §4 (no ``none``)     DisallowedAlgorithm
``typ`` is at+jwt           RFC 9068 §4, RFC 8725 §3.11                  WrongType
no duplicate member names  RFC 7515 §5.2 step 4, RFC 7519 §7.2 step 10  MalformedToken
claims are a JSON object    RFC 7519 §7.2 step 10                        MalformedToken
claim types, required set   RFC 7519 §4.1, RFC 9068 §2.2                 InvalidClaims
``iss`` exact               RFC 9068 §4 step 4                           WrongIssuer
``aud`` contains ours       RFC 9068 §4 step 5                           WrongAudience
``exp`` / ``nbf`` / ``iat`` RFC 9068 §4 step 7, RFC 7519 §4.1.4-6        TokenExpired / NotYetValid
==========================  ===========================================  =====================

Signature checks (key selection and ``verify``) live with the key material in ``_keys.py``.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from typing import Final

import orjson

from bastion.protocol import jose
from bastion.tokens._errors import DisallowedAlgorithm
from bastion.tokens._errors import InvalidClaims
from bastion.tokens._errors import MalformedToken
from bastion.tokens._errors import TokenExpired
from bastion.tokens._errors import TokenNotYetValid
from bastion.tokens._errors import TokenTooLarge
from bastion.tokens._errors import UnsupportedHeader
from bastion.tokens._errors import WrongAudience
from bastion.tokens._errors import WrongIssuer
from bastion.tokens._errors import WrongType

#: RFC 9068 §2.2: the claims a conforming access token always carries. Opt in with
#: ``TokenValidator(..., required_claims=RFC9068_REQUIRED_CLAIMS)``.
RFC9068_REQUIRED_CLAIMS: Final = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")
DEFAULT_ALGORITHMS: Final = ("ES256", "RS256")
DEFAULT_MAX_TOKEN_BYTES: Final = 8192
_ACCESS_TOKEN_TYPES: Final = frozenset({"at+jwt", "application/at+jwt"})
_STRING_CLAIMS: Final = ("sub", "client_id", "jti", "scope", "iss")
_TIME_CLAIMS: Final = ("exp", "nbf", "iat")


@dataclass(frozen=True, slots=True)
class Rules:
    """The settings the checks need, fixed when a validator is built."""

    issuer: str
    algorithms: frozenset[str]
    leeway: float = 60.0
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES
    required_claims: tuple[str, ...] = ("exp",)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate member name")
    return dict(pairs)


def _refuse_duplicates(document: bytes, what: str) -> None:
    """Refuse a JSON text in which any object repeats a member name.

    RFC 7515 §5.2 and RFC 7519 §7.2 let a parser either reject duplicates or keep the last one;
    orjson keeps the last one, but a service that parses the same token again (with the
    ``Authorization`` header forwarded) may keep the first, and then two parties act on two
    different subjects, audiences or expiries carried by one signature. Rejecting leaves one
    reading.
    """
    try:
        json.loads(document, object_pairs_hook=_unique_members)
    except (ValueError, RecursionError) as exc:
        raise MalformedToken(f"{what}: {exc}"[:100]) from None


def allowed_algorithms(algorithms: Collection[str]) -> frozenset[str]:
    """Validate an issuer's algorithm allowlist.

    Raises:
        ValueError: empty, or naming ``none`` (any spelling), an HMAC algorithm, or anything
            ``protocol.jose`` does not implement. Asymmetric only (RFC 8725 §3.1, §3.2).
    """
    if isinstance(algorithms, str) or not algorithms:
        raise ValueError("algorithms must be a non-empty collection of names")
    for alg in algorithms:
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise ValueError(f"algorithm {alg!r} is never allowed")
        if alg not in jose.SUPPORTED_ALGORITHMS:
            raise ValueError(f"unsupported algorithm {alg!r}; choose from {jose.SUPPORTED_ALGORITHMS}")
    return frozenset(algorithms)


def parse_token(token: str, rules: Rules) -> jose.CompactJWS:
    """Size, syntax and header checks; no key is needed yet.

    Raises:
        TokenTooLarge, MalformedToken, UnsupportedHeader, DisallowedAlgorithm, WrongType.
    """
    if not isinstance(token, str):
        raise MalformedToken("a token is a str")
    if len(token) > rules.max_token_bytes:
        raise TokenTooLarge(f"{len(token)} bytes > {rules.max_token_bytes}")
    try:
        parsed = jose.parse_compact(token)
    except jose.CriticalHeaderError as exc:
        raise UnsupportedHeader(str(exc)) from exc
    except jose.JOSEError as exc:
        raise MalformedToken(str(exc)) from exc
    header = parsed.header
    _refuse_duplicates(jose.b64url_decode(parsed.signing_input.split(b".", 1)[0]), "header")
    alg = header["alg"]
    if alg not in rules.algorithms:
        # ``none`` in any spelling and every HS* can never be in the allowlist (see above).
        raise DisallowedAlgorithm(f"alg {alg[:20]!r} is not allowed for {rules.issuer}")
    typ = header.get("typ")
    # RFC 9068 §4: "Resource servers MUST verify that the typ header value is "at+jwt" or
    # "application/at+jwt" and reject tokens carrying any other value." Media types compare
    # case-insensitively (RFC 2045 §5.1).
    if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
        raise WrongType(f"typ {str(typ)[:30]!r} is not at+jwt")
    return parsed


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_claims(payload: bytes, rules: Rules, audience: str, now: float) -> dict[str, Any]:
    """Decode and check the claims of a token whose signature already verified.

    Args:
        payload: The decoded JWS payload.
        rules: The issuer's settings.
        audience: The audience this resource server answers to.
        now: Current time in seconds since the epoch.

    Returns:
        The claims, a JSON object.

    Raises:
        MalformedToken, InvalidClaims, WrongIssuer, WrongAudience, TokenExpired, TokenNotYetValid.
    """
    try:
        claims = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedToken("claims are not JSON") from exc
    if not isinstance(claims, dict):
        # RFC 7519 §7.2 step 10: the JWT Claims Set must be a JSON object.
        raise MalformedToken("claims are not a JSON object")
    _refuse_duplicates(payload, "claims")
    for name in rules.required_claims:
        if name not in claims:
            raise InvalidClaims(f"claim {name} is required", reason="missing_claim")
    if "exp" not in claims:
        raise InvalidClaims("claim exp is required", reason="missing_claim")
    for name in _STRING_CLAIMS:
        if name in claims and not isinstance(claims[name], str):
            raise InvalidClaims(f"claim {name} must be a string")
    for name in _TIME_CLAIMS:
        if name in claims and not _is_number(claims[name]):
            raise InvalidClaims(f"claim {name} must be a NumericDate")

    # RFC 9068 §4: "The issuer identifier for the authorization server ... MUST exactly match
    # the value of the iss claim."
    if claims.get("iss") != rules.issuer:
        raise WrongIssuer(f"iss {str(claims.get('iss'))[:100]!r}")
    # RFC 9068 §4: "The resource server MUST validate that the aud claim contains a resource
    # indicator value corresponding to an identifier the resource server expects for itself."
    aud = claims.get("aud")
    if isinstance(aud, str):
        audience_ok = aud == audience
    elif isinstance(aud, list) and all(isinstance(item, str) for item in aud):
        audience_ok = audience in aud
    else:
        raise WrongAudience("aud is missing or not a string or array of strings")
    if not audience_ok:
        raise WrongAudience(f"aud does not contain {audience!r}")

    leeway = rules.leeway
    # RFC 7519 §4.1.4: "the current date/time MUST be before the expiration date/time".
    if now - leeway >= claims["exp"]:
        raise TokenExpired(f"exp {claims['exp']} <= now {now:.0f} - leeway {leeway:g}")
    # RFC 7519 §4.1.5: "the current date/time MUST be after or equal to the not-before".
    if "nbf" in claims and now + leeway < claims["nbf"]:
        raise TokenNotYetValid(f"nbf {claims['nbf']} > now {now:.0f} + leeway {leeway:g}")
    if "iat" in claims and now + leeway < claims["iat"]:
        raise TokenNotYetValid(f"iat {claims['iat']} is in the future", reason="issued_in_future")
    return claims
