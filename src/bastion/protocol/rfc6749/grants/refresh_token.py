"""Refreshing an access token (RFC 6749 §6) with rotation and reuse detection (RFC 9700 §4.14).

https://www.rfc-editor.org/rfc/rfc6749#section-6

Each sign-in starts a *family*; every refresh rotates the presented token to a successor in the
same family. States of one refresh token, decided by :func:`classify_presented`::

    CURRENT ──rotate (one conditional UPDATE)──► ROTATED
    ROTATED, presented ≤ grace after rotation ──► GRACE  (answer with the same successor pair)
    ROTATED, presented later ───────────────────► REUSE  (theft: revoke the family, audit)

Invariants: rotation is atomic in the database (of N concurrent presentations exactly one
rotates); the successor's scope equals the family's (RFC 6749 §6: the new refresh token's
"scope MUST be identical to that of the refresh token included by the client"); only the access
token's scope may narrow. A family dies at ``absolute_expires_at`` whatever happens, and a token
dies ``idle_ttl`` after it was issued.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from bastion.protocol.errors import InvalidGrant
from bastion.protocol.errors import InvalidRequest
from bastion.protocol.errors import InvalidScope
from bastion.protocol.errors import UnauthorizedClient
from bastion.protocol.models import Client
from bastion.protocol.rfc6749.scope import parse_scope


@dataclass(frozen=True, slots=True)
class RefreshFamily:
    """One grant: everything refresh tokens of one sign-in share."""

    family_id: str
    client_id: str
    subject: str
    scope: tuple[str, ...]
    sid: str
    auth_time: float
    created_at: float
    absolute_expires_at: float
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """One refresh token's record, looked up by the keyed hash of the token."""

    token_hash: str
    family_id: str
    issued_at: float
    expires_at: float
    rotated_at: float | None = None


class Presented(StrEnum):
    """How to answer a presented refresh token."""

    CURRENT = "current"  #: rotate it
    GRACE = "grace"  #: already rotated moments ago: replay the same successor
    REUSE = "reuse"  #: already rotated long ago: theft


def issues_refresh_token(client: Client, scope: Iterable[str]) -> bool:
    """Whether a grant gets a refresh token: the client is allowed the ``refresh_token`` grant,
    or the user granted ``offline_access`` (OIDC Core §11)."""
    return "refresh_token" in client.grant_types or "offline_access" in scope


def may_refresh(client: Client, family: RefreshFamily) -> None:
    """Whether ``client`` may use the refresh grant on ``family``.

    Raises:
        InvalidGrant: the family belongs to another client. RFC 6749 §6: the server MUST
            "validate the refresh token ... and ensure that the refresh token was issued to the
            authenticated client".
        UnauthorizedClient: neither the grant type nor ``offline_access`` allows refreshing.
    """
    if family.client_id != client.client_id:
        raise InvalidGrant("the refresh token was issued to another client")
    if not issues_refresh_token(client, family.scope):
        raise UnauthorizedClient("this client may not use the refresh_token grant")


def parse_refresh_request(params: Mapping[str, str]) -> tuple[str, str | None]:
    """The ``refresh_token`` and optional ``scope`` of a refresh request (RFC 6749 §6).

    Raises:
        InvalidRequest: ``refresh_token`` is missing.
    """
    token = params.get("refresh_token")
    if not token:
        raise InvalidRequest("refresh_token is required")
    return token, params.get("scope") or None


def narrow_scope(requested: str | None, granted: tuple[str, ...]) -> tuple[str, ...]:
    """The access token's scope on refresh.

    RFC 6749 §6: "The requested scope MUST NOT include any scope not originally granted by the
    resource owner, and if omitted is treated as equal to the scope originally granted".

    Raises:
        InvalidScope: ``requested`` asks for something not granted.
    """
    if requested is None:
        return granted
    asked = tuple(parse_scope(requested))
    if not asked:
        return granted
    extra = [token for token in asked if token not in granted]
    if extra:
        raise InvalidScope(f"scope exceeds the original grant: {extra[0]}")
    return asked


def classify_presented(token: RefreshToken, family: RefreshFamily, now: float, grace: float) -> Presented:
    """Decide how to answer a refresh token presented at ``now``.

    Args:
        token: the presented token's record.
        family: its family.
        now: the current time.
        grace: seconds after rotation during which a retry gets the same successor (0: none).

    Raises:
        InvalidGrant: the family is revoked or past its absolute lifetime, or the (current)
            token is past its idle lifetime.
    """
    if family.revoked_at is not None:
        raise InvalidGrant("the refresh token was revoked")
    if now >= family.absolute_expires_at:
        raise InvalidGrant("the refresh token has expired")
    if token.rotated_at is not None:
        if grace > 0 and now - token.rotated_at <= grace:
            return Presented.GRACE
        return Presented.REUSE
    if now >= token.expires_at:
        raise InvalidGrant("the refresh token has expired")
    return Presented.CURRENT


def token_expiry(now: float, idle_ttl: float, family: RefreshFamily) -> float:
    """When a token issued at ``now`` dies: idle lifetime, capped by the family's absolute one."""
    return min(now + idle_ttl, family.absolute_expires_at)
