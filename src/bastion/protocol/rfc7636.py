"""RFC 7636: Proof Key for Code Exchange by OAuth Public Clients (PKCE).

https://www.rfc-editor.org/rfc/rfc7636

Bastion follows OAuth 2.1 (draft-ietf-oauth-v2-1 §4.1.1) and RFC 9700 §2.1.1: PKCE is required for
every client, confidential ones too, and only ``S256`` is accepted. ``plain`` exists in RFC 7636
only for clients that cannot hash, and "Clients are permitted to use 'plain' only if they cannot
support 'S256' for some technical reason" (RFC 7636 §4.2): no such client exists today.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

from bastion.protocol.errors import InvalidGrant
from bastion.protocol.errors import InvalidRequest
from bastion.protocol.jose import b64url_encode

S256: Final = "S256"

#: What the discovery documents advertise as ``code_challenge_methods_supported``.
CODE_CHALLENGE_METHODS: Final = (S256,)

# RFC 7636 §4.1: code-verifier = 43*128unreserved, unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
_VERIFIER_RE: Final = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# An S256 challenge is the unpadded base64url of a SHA-256 digest: exactly 43 characters.
_S256_CHALLENGE_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}")


def s256(verifier: str) -> str:
    """``BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))`` (RFC 7636 §4.2)."""
    return b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())


def validate_code_challenge(challenge: str | None, method: str | None) -> str:
    """Check the PKCE parameters of an authorization request.

    Args:
        challenge: the ``code_challenge`` parameter.
        method: the ``code_challenge_method`` parameter.

    Returns:
        The challenge.

    Raises:
        InvalidRequest: the challenge is missing or malformed, or the method is not ``S256``.
            RFC 7636 §4.4.1: "If the server requires Proof Key for Code Exchange (PKCE) by OAuth
            public clients and the client does not send the "code_challenge" in the request, the
            authorization endpoint MUST return the authorization error response with the "error"
            value set to "invalid_request"."
    """
    if not challenge:
        raise InvalidRequest("code_challenge is required (PKCE with S256)")
    # RFC 7636 §4.3: the method "defaults to plain if not present in the request", and plain is
    # refused, so a missing method is refused too rather than silently reinterpreted.
    if method != S256:
        raise InvalidRequest("code_challenge_method must be S256")
    if not _S256_CHALLENGE_RE.fullmatch(challenge):
        raise InvalidRequest("code_challenge is not a base64url SHA-256 digest")
    return challenge


def validate_code_verifier(verifier: str | None) -> str:
    """Check the syntax of a ``code_verifier`` (RFC 7636 §4.1).

    Raises:
        InvalidGrant: missing or outside ``43*128unreserved``. (RFC 7636 §4.6: when the values do
            not match, "an error response indicating "invalid_grant" as described in Section 5.2
            of [RFC6749] MUST be returned"; a malformed verifier cannot match.)
    """
    if not verifier:
        raise InvalidGrant("code_verifier is required")
    if not _VERIFIER_RE.fullmatch(verifier):
        raise InvalidGrant("code_verifier is malformed")
    return verifier


def verify_code_verifier(verifier: str | None, challenge: str) -> None:
    """Check ``verifier`` against the ``S256`` challenge stored with the code (RFC 7636 §4.6).

    Raises:
        InvalidGrant: the verifier is malformed or does not hash to the challenge.
    """
    checked = validate_code_verifier(verifier)
    if not hmac.compare_digest(s256(checked).encode("ascii"), challenge.encode("ascii")):
        raise InvalidGrant("code_verifier does not match the code_challenge")
