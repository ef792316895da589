"""The authorization code grant's token request (RFC 6749 §4.1.3) with PKCE (RFC 7636 §4.6).

https://www.rfc-editor.org/rfc/rfc6749#section-4.1.3

Code lifecycle (the state lives in the fast-state store, keyed by the code's keyed hash)::

    issued ──consume (atomic, once)──► redeemed ──(marker kept for the tokens' lifetime)──► gone
       │                                   │
       └── 60 s without use ──► gone       └── presented again ──► replay: revoke what it issued

Rule 1: a code is consumed before anything is checked, so a failed redemption burns it too
(RFC 6749 §4.1.2: "The client MUST NOT use the authorization code more than once").
Rule 2: a second presentation is answered ``invalid_grant`` and revokes "all tokens previously
issued based on that authorization code" (RFC 6749 §4.1.2, "SHOULD", made a MUST here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bastion.protocol.errors import InvalidGrant
from bastion.protocol.errors import InvalidRequest
from bastion.protocol.models import Client
from bastion.protocol.rfc7636 import verify_code_verifier


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    """What an authorization code stands for: bound to the client, redirect URI, PKCE challenge,
    nonce and the user's login session (``sid``)."""

    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    code_challenge: str
    subject: str
    sid: str
    auth_time: float
    issued_at: float
    expires_at: float
    nonce: str | None = None

    def to_json(self) -> bytes:
        """Serialised for the fast-state store."""
        return orjson.dumps(
            {
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": list(self.scope),
                "code_challenge": self.code_challenge,
                "subject": self.subject,
                "sid": self.sid,
                "auth_time": self.auth_time,
                "issued_at": self.issued_at,
                "expires_at": self.expires_at,
                "nonce": self.nonce,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> AuthorizationCode:
        """The inverse of :meth:`to_json`."""
        raw: dict[str, Any] = orjson.loads(data)
        return cls(
            client_id=raw["client_id"],
            redirect_uri=raw["redirect_uri"],
            scope=tuple(raw["scope"]),
            code_challenge=raw["code_challenge"],
            subject=raw["subject"],
            sid=raw["sid"],
            auth_time=raw["auth_time"],
            issued_at=raw["issued_at"],
            expires_at=raw["expires_at"],
            nonce=raw.get("nonce"),
        )


@dataclass(frozen=True, slots=True)
class CodeTokenRequest:
    """The parameters of an ``authorization_code`` token request."""

    code: str
    redirect_uri: str | None
    code_verifier: str | None


def parse_code_token_request(params: Mapping[str, str]) -> CodeTokenRequest:
    """Read the token request parameters (RFC 6749 §4.1.3).

    Raises:
        InvalidRequest: ``code`` is missing.
    """
    code = params.get("code")
    if not code:
        raise InvalidRequest("code is required")
    return CodeTokenRequest(
        code=code,
        redirect_uri=params.get("redirect_uri") or None,
        code_verifier=params.get("code_verifier") or None,
    )


def validate_redemption(
    record: AuthorizationCode, client: Client, request: CodeTokenRequest, now: float
) -> None:
    """Check a consumed code against the token request.

    RFC 6749 §4.1.3: the server MUST "ensure that the authorization code was issued to the
    authenticated confidential client, or if the client is public, ensure that the code was
    issued to "client_id" in the request, verify that the authorization code is valid, and ensure
    that the "redirect_uri" parameter is present if the "redirect_uri" parameter was included in
    the initial authorization request ... and if included ensure that their values are
    identical." Bastion always requires ``redirect_uri`` at the authorization endpoint, so it is
    always required here.

    Raises:
        InvalidGrant: another client's code, an expired code, a different redirect URI, or a
            ``code_verifier`` that does not match (RFC 7636 §4.6).
    """
    if record.client_id != client.client_id:
        raise InvalidGrant("the code was issued to another client")
    if now >= record.expires_at:
        raise InvalidGrant("the code has expired")
    if request.redirect_uri != record.redirect_uri:
        raise InvalidGrant("redirect_uri does not match the authorization request")
    verify_code_verifier(request.code_verifier, record.code_challenge)
