"""Why a token was refused: one root, a short ``reason`` for metrics, an RFC 6750 mapping.

Hierarchy::

    TokenError                      invalid_token   401   (root; catch this one)
    ├── MalformedToken              "malformed"
    │   └── TokenTooLarge           "too_large"
    ├── UnsupportedHeader           "crit"
    ├── DisallowedAlgorithm         "disallowed_alg"
    ├── WrongType                   "wrong_typ"
    ├── UnknownKey                  "unknown_kid" (also "kid_required", "key_mismatch", "ambiguous_kid")
    ├── InvalidSignature            "bad_signature"
    ├── InvalidClaims               "invalid_claims"
    │   ├── TokenExpired            "expired"
    │   ├── TokenNotYetValid        "not_yet_valid" (also "issued_in_future")
    │   ├── WrongIssuer             "wrong_iss"
    │   └── WrongAudience           "wrong_aud"
    ├── TokenRevoked                "revoked"
    ├── TokenInactive               "inactive"        (introspection said ``active: false``)
    ├── IssuerUnavailable           "issuer_unavailable"  503, no RFC 6750 error code
    └── InsufficientScope           insufficient_scope 403

``description`` is the short text a client may see (``error_description``); ``detail`` is for
operators and logs only. ``reason`` is a fixed, low-cardinality label.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from bastion.tokens._challenge import bearer_challenge


class TokenError(Exception):
    """The access token provided is expired, revoked, malformed, or invalid (RFC 6750 §3.1)."""

    #: RFC 6750 §3.1 error code for ``WWW-Authenticate``; ``None`` means "send none".
    error: ClassVar[str | None] = "invalid_token"
    #: The HTTP status the edge should answer with.
    status_code: ClassVar[int] = 401
    #: Default metrics label; instances may carry a more precise one.
    default_reason: ClassVar[str] = "invalid_token"
    #: Client-safe text for ``error_description``.
    description: ClassVar[str] = "The access token is invalid"

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        super().__init__(detail or self.description)
        self.detail = detail
        self.reason: str = reason or self.default_reason

    def challenge(self, realm: str | None = None) -> str:
        """The ``WWW-Authenticate`` value for this error (RFC 6750 §3)."""
        return bearer_challenge(realm, error=self.error, description=self.description)


class MalformedToken(TokenError):
    """The token is not a well-formed compact JWS carrying a JSON object."""

    default_reason = "malformed"
    description = "The access token is malformed"


class TokenTooLarge(MalformedToken):
    """The token exceeds the size limit; refused before any parsing."""

    default_reason = "too_large"
    description = "The access token is too large"


class UnsupportedHeader(TokenError):
    """The header lists ``crit`` extensions, none of which we understand (RFC 7515 §4.1.11)."""

    default_reason = "crit"
    description = "The access token uses an unsupported critical header"


class DisallowedAlgorithm(TokenError):
    """The ``alg`` is not on this issuer's allowlist (RFC 8725 §3.1); ``none`` and HMAC never are."""

    default_reason = "disallowed_alg"
    description = "The access token is signed with a disallowed algorithm"


class WrongType(TokenError):
    """The ``typ`` header is not ``at+jwt`` (RFC 9068 §4)."""

    default_reason = "wrong_typ"
    description = "The token is not an access token"


class UnknownKey(TokenError):
    """No key of the issuer's JWKS can verify the token."""

    default_reason = "unknown_kid"
    description = "The access token is signed with an unknown key"


class InvalidSignature(TokenError):
    """The signature does not verify."""

    default_reason = "bad_signature"
    description = "The access token signature is invalid"


class InvalidClaims(TokenError):
    """A claim is missing or has the wrong type."""

    default_reason = "invalid_claims"
    description = "The access token claims are invalid"


class TokenExpired(InvalidClaims):
    """``exp`` has passed (beyond the leeway)."""

    default_reason = "expired"
    description = "The access token expired"


class TokenNotYetValid(InvalidClaims):
    """``nbf`` (or ``iat``) is in the future beyond the leeway."""

    default_reason = "not_yet_valid"
    description = "The access token is not yet valid"


class WrongIssuer(InvalidClaims):
    """``iss`` is not exactly the trusted issuer (RFC 9068 §4)."""

    default_reason = "wrong_iss"
    description = "The access token was issued by another issuer"


class WrongAudience(InvalidClaims):
    """``aud`` does not contain the expected audience (RFC 9068 §4)."""

    default_reason = "wrong_aud"
    description = "The access token is not meant for this audience"


class TokenRevoked(TokenError):
    """The token's ``jti`` was revoked."""

    default_reason = "revoked"
    description = "The access token was revoked"


class TokenInactive(TokenError):
    """Introspection answered ``active: false`` (RFC 7662 §2.2)."""

    default_reason = "inactive"
    description = "The access token is not active"


class IssuerUnavailable(TokenError):
    """The issuer's metadata, JWKS, introspection or revocation source could not be reached.

    Not the client's fault: the edge answers 503 and sends no ``error`` code.
    """

    error = None
    status_code = 503
    default_reason = "issuer_unavailable"
    description = "The authorization server is unavailable"


class InsufficientScope(TokenError):
    """The request requires higher privileges than provided by the access token (RFC 6750 §3.1)."""

    error = "insufficient_scope"
    status_code = 403
    default_reason = "insufficient_scope"
    description = "The access token lacks a required scope"

    def __init__(self, required: Iterable[str], detail: str = "") -> None:
        self.required: tuple[str, ...] = tuple(required)
        super().__init__(detail or f"requires scopes: {' '.join(self.required)}")

    def challenge(self, realm: str | None = None) -> str:
        """The challenge naming the scopes needed (RFC 6750 §3: the ``scope`` attribute)."""
        return bearer_challenge(
            realm, error=self.error, description=self.description, scope=" ".join(self.required)
        )
