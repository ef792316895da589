"""The audit trail's vocabulary: every event type, and the request an event belongs to.

Every type is listed twice on purpose: :data:`EventType` lets mypy refuse a misspelt type at a
call site, :data:`EVENT_TYPES` describes each one at run time (``bastion audit types``); a test
holds the two, and the table in ``docs/audit.md``, equal.
"""

from __future__ import annotations

from contextvars import ContextVar
from contextvars import Token
from dataclasses import dataclass
from typing import Final
from typing import Literal

__all__ = [
    "EVENT_TYPES",
    "FORBIDDEN_DETAILS",
    "EventType",
    "RequestScope",
    "current_request",
    "request_scope",
    "reset_scope",
]

EventType = Literal[
    # sign-in
    "login.succeeded",
    "login.failed",
    "login.throttled",
    "logout.succeeded",
    "login_sessions.ended",
    "login_session.revoked",
    "consent.granted",
    "consent.denied",
    "consent.revoked",
    # codes and tokens
    "authorization_code.issued",
    "authorization_code.replayed",
    "token.issued",
    "token.refreshed",
    "token.refused",
    "token.revoked",
    "refresh_token.revoked",
    "refresh_token.reuse_detected",
    "refresh_token.grace_replay",
    # clients
    "client.created",
    "client.secret_rotated",
    "client.updated",
    "client.disabled",
    "client.enabled",
    "client.deleted",
    "client.tokens_revoked",
    "client.auth_failed",
    "client.auth_throttled",
    "client.rate_limited",
    # signing keys
    "key.created",
    "key.imported",
    "key.activated",
    "key.retired",
    "key.expired",
    "key.revoked",
    "kek.rotated",
    # users and roles
    "user.created",
    "user.disabled",
    "user.enabled",
    "user.password_changed",
    "user.password_rehashed",
    "user.roles_changed",
    "user.updated",
    "user.deleted",
    "role.created",
    "role.deleted",
    # the gateway's bans
    "ip.banned",
    "ip.unbanned",
    # the gateway's policies
    "gateway.refused",
    "gateway.throttled",
    # alert rules
    "alert.fired",
    "alert.resolved",
    "alert.action",
    "alert.webhook_delivered",
    "alert.webhook_failed",
    # the admin API
    "admin.call",
]

#: Every event type and what it records (the same words as the table in ``docs/audit.md``).
EVENT_TYPES: Final[dict[str, str]] = {
    "login.succeeded": "A user signed in with the right password.",
    "login.failed": "A sign-in failed: unknown user, wrong password or disabled account.",
    "login.throttled": "Sign-in attempts for an account or from an address went over the limit.",
    "logout.succeeded": "A user signed out (RP-initiated logout).",
    "login_sessions.ended": "Every sign-in session of a user ended (disabled, deleted, new password).",
    "login_session.revoked": "An operator ended one sign-in session of a user.",
    "consent.granted": "A user allowed a client the scopes shown.",
    "consent.denied": "A user refused the consent screen.",
    "consent.revoked": "An operator revoked a user's consent to a client (its refresh tokens too).",
    "authorization_code.issued": "An authorization code was issued to a client for a user.",
    "authorization_code.replayed": "A used authorization code was presented again; its tokens are revoked.",
    "token.issued": "An access token was issued (client_credentials or authorization_code).",
    "token.refreshed": "A refresh token was redeemed for a new access token and refresh token.",
    "token.refused": "The token endpoint refused a request.",
    "token.revoked": "An access token was revoked.",
    "refresh_token.revoked": "A client revoked a refresh token (its family ends).",
    "refresh_token.reuse_detected": "A rotated refresh token was presented again; its family is revoked.",
    "refresh_token.grace_replay": "A just-rotated refresh token was presented again within the grace window.",
    "client.created": "A client was registered.",
    "client.secret_rotated": "A client's secret was replaced.",
    "client.updated": "A client's registration was changed (name, scopes, redirect URIs, grants ...).",
    "client.disabled": "A client was disabled.",
    "client.enabled": "A disabled client was enabled again.",
    "client.deleted": "A client was deleted.",
    "client.tokens_revoked": "Every token of a disabled client was announced revoked.",
    "client.auth_failed": "Client authentication failed at introspection, revocation or the revocation list.",
    "client.auth_throttled": "Failed client authentications locked a gate (client, address or both).",
    "client.rate_limited": "A client went over its request rate at introspection or revocation.",
    "key.created": "A signing key was generated (first key, scheduled or manual rotation, replacement).",
    "key.imported": "A signing key made elsewhere was imported.",
    "key.activated": "A signing key started signing.",
    "key.retired": "A newer key took over; the key still verifies the tokens it signed.",
    "key.expired": "A retired key outlived every token it signed and left the JWKS.",
    "key.revoked": "A signing key was withdrawn; its tokens are refused.",
    "kek.rotated": "Every sealed secret was re-sealed under a new key-encryption key.",
    "user.created": "A user was created.",
    "user.disabled": "A user was disabled.",
    "user.enabled": "A disabled user was enabled again.",
    "user.password_changed": "A user's password was replaced.",
    "user.password_rehashed": "A user's password hash was upgraded at sign-in.",
    "user.roles_changed": "A user's roles were replaced.",
    "user.updated": "A user's e-mail address or display name was changed.",
    "user.deleted": "A user was deleted.",
    "role.created": "A role was created.",
    "role.deleted": "A role was deleted.",
    "ip.banned": "An address or network was banned at the gateway (automatically or by an operator).",
    "ip.unbanned": "A ban was lifted.",
    "gateway.refused": "The gateway's policies refused a request (401, 403, 405, 413, 415 ...); one per address, route, status and reason a minute.",
    "gateway.throttled": "A rate limit refused a request (429); one per address, route and reason a minute.",
    "alert.fired": "An alert rule's condition held: the alert fired (its actions follow).",
    "alert.resolved": "A firing alert's condition no longer holds.",
    "alert.action": "An alert's ban or circuit opening was carried out, or failed.",
    "alert.webhook_delivered": "An alert's webhook message was accepted by its receiver.",
    "alert.webhook_failed": "An attempt to deliver an alert's webhook message failed (or the queue was full).",
    "admin.call": "A request to the admin API, answered or refused (method, path, status).",
}

#: ``details`` keys that could only hold a secret or a token; :class:`~bastion.ops.audit.AuditLog`
#: refuses them.
FORBIDDEN_DETAILS: Final = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "code",
        "code_verifier",
        "client_secret",
        "secret",
        "password",
        "private_key",
    }
)


@dataclass(slots=True)
class RequestScope:
    """What the request being served tells every event it causes.

    The server sets one per request (:func:`request_scope`); services fill :attr:`client` and
    :attr:`actor` when they learn them (an authenticated client).
    """

    request_id: str | None = None
    #: The W3C trace-id of the request's ``traceparent``, when it sent a valid one.
    trace_id: str | None = None
    #: The client address (after trusted proxies).
    address: str | None = None
    #: The authenticated client, once known.
    client: str | None = None
    #: Who acts, once known (the authenticated client); ``anonymous`` until then.
    actor: str | None = None


_current: ContextVar[RequestScope | None] = ContextVar("bastion_audit_request", default=None)


def current_request() -> RequestScope | None:
    """The scope of the request being served, or ``None`` outside one."""
    return _current.get()


def request_scope(scope: RequestScope) -> Token[RequestScope | None]:
    """Make ``scope`` current for this request (the context is the request's task); returns
    the token :func:`reset_scope` takes."""
    return _current.set(scope)


def reset_scope(token: Token[RequestScope | None]) -> None:
    """Undo :func:`request_scope`."""
    _current.reset(token)
