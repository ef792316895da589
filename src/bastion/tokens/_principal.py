"""The verified identity a validated access token stands for (RFC 9068 §2.2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from bastion.tokens._errors import InsufficientScope


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as vouched for by the issuer. Immutable and safe to share.

    Attributes:
        subject: ``sub``: the resource owner, or the client itself for client credentials.
        client_id: ``client_id`` (RFC 9068 §2.2, RFC 8693 §4.3).
        scopes: ``scope`` split on spaces (RFC 9068 §2.2.3, RFC 6749 §3.3).
        claims: Every claim of the token (read-only).
        token_id: ``jti``, if any.
        expires_at: ``exp`` in seconds since the epoch.
        issuer: The trusted issuer that signed (or introspected) the token.
        audience: The audience this token was validated for.

    .. versionadded:: 0.1
    """

    subject: str | None
    client_id: str | None
    scopes: frozenset[str]
    claims: Mapping[str, Any]
    token_id: str | None
    expires_at: float
    issuer: str
    audience: str

    def has_scopes(self, *scopes: str) -> bool:
        """Whether every one of ``scopes`` was granted."""
        return self.scopes.issuperset(scopes)

    def require_scopes(self, *scopes: str) -> None:
        """Raise unless every one of ``scopes`` was granted.

        Raises:
            InsufficientScope: naming the scopes required (for the RFC 6750 challenge).
        """
        if not self.scopes.issuperset(scopes):
            raise InsufficientScope(scopes)


def principal_from_claims(claims: dict[str, Any], *, issuer: str, audience: str) -> Principal:
    """A :class:`Principal` from claims already checked by the rules (types included)."""
    scope = claims.get("scope")
    return Principal(
        subject=claims.get("sub"),
        client_id=claims.get("client_id"),
        scopes=frozenset(scope.split()) if scope else frozenset(),
        claims=MappingProxyType(claims),
        token_id=claims.get("jti"),
        expires_at=claims["exp"],
        issuer=issuer,
        audience=audience,
    )


def issued_before(principal: Principal, moment: float) -> bool:
    """Whether the token was issued before ``moment`` (a token without ``iat`` counts as
    issued before anything: it cannot prove otherwise)."""
    iat = principal.claims.get("iat")
    return not isinstance(iat, int | float) or isinstance(iat, bool) or iat < moment
