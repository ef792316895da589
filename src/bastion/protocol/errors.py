"""OAuth 2.0 errors, one class per RFC error code.

Hierarchy::

    OAuthError                      base; ``error`` is the RFC code, ``status_hint`` the HTTP status
    ├── InvalidRequest              RFC 6749 §4.1.2.1, §5.2
    ├── InvalidClient               §5.2 (401 + WWW-Authenticate when the client used HTTP auth)
    ├── InvalidGrant                §5.2
    ├── UnauthorizedClient          §4.1.2.1, §5.2
    ├── UnsupportedGrantType        §5.2
    ├── UnsupportedResponseType     §4.1.2.1
    ├── InvalidScope                §4.1.2.1, §5.2
    ├── InvalidTarget               RFC 8707 §2
    ├── AccessDenied                §4.1.2.1
    ├── ServerError                 §4.1.2.1
    ├── TemporarilyUnavailable      §4.1.2.1 (also used for throttling)
    ├── UnsupportedTokenType        RFC 7009 §2.2.1
    ├── LoginRequired / ConsentRequired / InteractionRequired   OIDC Core §3.1.2.6
    └── InvalidToken / InsufficientScope                        RFC 6750 §3.1

The client sees ``description``; operators see ``detail`` (logged, never sent).
"""

from __future__ import annotations

import re
from typing import ClassVar

# RFC 6749 §5.2: error_description "MUST NOT include characters outside the set
# %x20-21 / %x23-5B / %x5D-7E". Matched with fullmatch: ``$`` would let a final newline through.
_DESCRIPTION_RE = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]*")


class OAuthError(Exception):
    """Base of every protocol error; carries the RFC code as a class attribute."""

    error: ClassVar[str] = "invalid_request"
    status_hint: ClassVar[int] = 400

    def __init__(self, description: str | None = None, *, detail: str | None = None) -> None:
        if description is not None and not _DESCRIPTION_RE.fullmatch(description):
            # Drop what RFC 6749 forbids rather than send a description a client may choke on.
            description = "".join(ch for ch in description if _DESCRIPTION_RE.fullmatch(ch)) or None
        self.description = description
        self.detail = detail
        super().__init__(description or self.error)

    def to_dict(self) -> dict[str, str]:
        """The JSON error body of RFC 6749 §5.2."""
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


class InvalidRequest(OAuthError):
    """The request is missing a required parameter, includes an unsupported parameter value
    (other than grant type), repeats a parameter, includes multiple credentials ... or is
    otherwise malformed (RFC 6749 §5.2)."""

    error = "invalid_request"


class InvalidClient(OAuthError):
    """Client authentication failed (e.g., unknown client, no client authentication included,
    or unsupported authentication method) (RFC 6749 §5.2)."""

    error = "invalid_client"
    status_hint = 401

    def __init__(
        self, description: str | None = None, *, detail: str | None = None, used_basic: bool = False
    ) -> None:
        super().__init__(description, detail=detail)
        self.used_basic = used_basic


class InvalidGrant(OAuthError):
    """The provided authorization grant ... or refresh token is invalid, expired, revoked, does not
    match the redirection URI used in the authorization request, or was issued to another client
    (RFC 6749 §5.2)."""

    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    """The authenticated client is not authorized to use this authorization grant type
    (RFC 6749 §5.2)."""

    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    """The authorization grant type is not supported by the authorization server (RFC 6749 §5.2)."""

    error = "unsupported_grant_type"


class UnsupportedResponseType(OAuthError):
    """The authorization server does not support obtaining an authorization code using this method
    (RFC 6749 §4.1.2.1)."""

    error = "unsupported_response_type"


class InvalidScope(OAuthError):
    """The requested scope is invalid, unknown, malformed, or exceeds the scope granted by the
    resource owner (RFC 6749 §5.2)."""

    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """The requested resource is invalid, missing, unknown, or malformed (RFC 8707 §2)."""

    error = "invalid_target"


class AccessDenied(OAuthError):
    """The resource owner or authorization server denied the request (RFC 6749 §4.1.2.1)."""

    error = "access_denied"
    status_hint = 403


class ServerError(OAuthError):
    """The authorization server encountered an unexpected condition (RFC 6749 §4.1.2.1)."""

    error = "server_error"
    status_hint = 500


class TemporarilyUnavailable(OAuthError):
    """The authorization server is currently unable to handle the request due to a temporary
    overloading (RFC 6749 §4.1.2.1)."""

    error = "temporarily_unavailable"
    status_hint = 503


class SlowDown(TemporarilyUnavailable):
    """Too many attempts: the caller must wait before trying again (HTTP 429)."""

    status_hint = 429

    def __init__(self, description: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class UnsupportedTokenType(OAuthError):
    """The authorization server does not support the revocation of the presented token type
    (RFC 7009 §2.2.1)."""

    error = "unsupported_token_type"


class LoginRequired(OAuthError):
    """The authorization server requires end-user authentication (OIDC Core §3.1.2.6)."""

    error = "login_required"


class ConsentRequired(OAuthError):
    """The authorization server requires end-user consent (OIDC Core §3.1.2.6)."""

    error = "consent_required"


class InteractionRequired(OAuthError):
    """The authorization server requires end-user interaction of some form (OIDC Core §3.1.2.6)."""

    error = "interaction_required"


class InvalidToken(OAuthError):
    """The access token provided is expired, revoked, malformed, or invalid (RFC 6750 §3.1)."""

    error = "invalid_token"
    status_hint = 401


class InsufficientScope(OAuthError):
    """The request requires higher privileges than provided by the access token (RFC 6750 §3.1)."""

    error = "insufficient_scope"
    status_hint = 403
