"""Refresh tokens: rotation with reuse detection (RFC 9700 §4.14.2, OAuth 2.1 §4.3.1).

Presenting a refresh token (see :mod:`bastion.protocol.rfc6749.grants.refresh_token`):

* *current*: the successor pair is issued first (access token signed, refresh token drawn),
  then one write transaction rotates the presented token - the conditional ``UPDATE`` decides -
  inserts the successor and keeps the whole response sealed (AES-GCM, bound to the presented
  token's hash) on the presented token's row;
* *rotated*: theft - RFC 9700 §4.14.2: "If a refresh token is compromised and subsequently used
  by both the attacker and the legitimate client, one of them will present an invalidated
  refresh token, which will inform the authorization server of the breach." The family and its
  access tokens are revoked and ``refresh_token.reuse_detected`` is audited, however soon after
  the rotation (Hydra and Keycloak have no reuse window by default either);
* *rotated, within* ``insecure_refresh_reuse_window`` (opt-in, default 0): the sealed response
  is opened and returned again, so two tabs or a network retry get the *same* pair
  (ory/hydra#1831, keycloak#14122, zitadel#9631) - and so would a thief within the window.

Of N concurrent presentations exactly one rotation commits; the others fall into the second
case, or the third if the window is set (CVE-2026-1035 was this race read-then-written).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from bastion.protocol.errors import InvalidGrant
from bastion.protocol.errors import UnauthorizedClient
from bastion.protocol.models import Client
from bastion.protocol.rfc6749.authorize import grant_scope
from bastion.protocol.rfc6749.grants.refresh_token import Presented
from bastion.protocol.rfc6749.grants.refresh_token import RefreshToken
from bastion.protocol.rfc6749.grants.refresh_token import classify_presented
from bastion.protocol.rfc6749.grants.refresh_token import may_refresh
from bastion.protocol.rfc6749.grants.refresh_token import narrow_scope
from bastion.protocol.rfc6749.grants.refresh_token import parse_refresh_request
from bastion.protocol.rfc6749.grants.refresh_token import token_expiry
from bastion.services.authorization_code import issue_access_token
from bastion.services.authorization_code import revoke_family
from bastion.services.authorization_code import sign_id_token
from bastion.services.authorization_code import token_response
from bastion.services.container import Services
from bastion.services.crypto import SealError
from bastion.services.users import people
from bastion.services.users import user_scopes
from bastion.storage.people_protocols import StoredRefresh

#: Sealed grace-window responses are dropped by ``purge_expired`` after this many seconds.
RESPONSE_RETENTION = 300.0


def _replay(services: Services, found: StoredRefresh) -> dict[str, Any]:
    if found.successor_response is None:
        raise InvalidGrant("the refresh token was already used")
    try:
        opened = services.sealer.open(found.successor_response, aad=found.token.token_hash.encode())
    except SealError as exc:
        raise InvalidGrant("the refresh token was already used") from exc
    body: dict[str, Any] = orjson.loads(opened)
    return body


async def _answer_rotated(services: Services, found: StoredRefresh, now: float) -> dict[str, Any]:
    """A rotated token was presented: revoke the family (or, within the opt-in
    ``insecure_refresh_reuse_window``, answer with the same pair)."""
    family = found.family
    kind = classify_presented(found.token, family, now, services.settings.insecure_refresh_reuse_window)
    if kind is Presented.GRACE:
        services.metrics.reuse("grace_replay")
        services.audit.emit(
            "refresh_token.grace_replay",
            subject=family.subject,
            client=family.client_id,
            details={"family_id": family.family_id},
        )
        return _replay(services, found)
    services.metrics.reuse("revoked")
    await revoke_family(services, family.family_id, now)
    services.audit.emit(
        "refresh_token.reuse_detected",
        outcome="denied",
        subject=family.subject,
        client=family.client_id,
        reason="rotated_token_reused",
        details={"family_id": family.family_id},
    )
    raise InvalidGrant("the refresh token was already used")


async def refresh(
    services: Services, client: Client, params: Mapping[str, str], now: float
) -> dict[str, Any]:
    """The ``refresh_token`` grant at the token endpoint (RFC 6749 §6).

    Raises:
        InvalidRequest: no ``refresh_token``.
        InvalidGrant: unknown, expired, revoked or reused token, or another client's.
        InvalidScope: a scope beyond the original grant.
        UnauthorizedClient: the client may not refresh.
    """
    presented, requested_scope = parse_refresh_request(params)
    store = people(services).refresh
    token_hash = services.sealer.hash_secret(presented)
    found = await store.find(token_hash)
    if found is None:
        raise InvalidGrant("the refresh token is invalid")
    family = found.family
    may_refresh(client, family)
    settings = services.settings
    if (
        classify_presented(found.token, family, now, settings.insecure_refresh_reuse_window)
        is not Presented.CURRENT
    ):
        return await _answer_rotated(services, found, now)
    user = await people(services).users.get_user(family.subject)
    if user is None or user.disabled:
        await revoke_family(services, family.family_id, now)
        raise InvalidGrant("the user is no longer allowed to sign in")
    # Only narrow (RFC 6749 §6), and never beyond what the user's roles grant today.
    scope = grant_scope(
        narrow_scope(requested_scope, family.scope), client.scopes, await user_scopes(services, user)
    )
    access = await issue_access_token(
        services,
        client=client,
        user=user,
        scope=scope,
        params=params,
        auth_time=family.auth_time,
        family_id=family.family_id,
        now=now,
    )
    successor_token = secrets.token_urlsafe(32)
    successor = RefreshToken(
        token_hash=services.sealer.hash_secret(successor_token),
        family_id=family.family_id,
        issued_at=now,
        expires_at=token_expiry(now, settings.refresh_token_idle_ttl, family),
    )
    id_token = None
    if "openid" in scope:
        # OIDC Core §12.2: a refreshed ID token keeps iss, sub, aud and auth_time; no nonce.
        id_token = sign_id_token(
            services,
            client=client,
            subject=user.user_id,
            sid=family.sid,
            auth_time=family.auth_time,
            now=now,
            nonce=None,
            access_token=access.token,
        )
    body = token_response(access, refresh_token=successor_token, id_token=id_token)
    sealed = services.sealer.seal(orjson.dumps(body), aad=token_hash.encode())
    if not await store.rotate(token_hash, successor, sealed, now):
        # Lost the race: this access token never leaves the server; answer like a retry.
        await services.tokens.revoke_jti(access.jti, access.expires_at, now)
        again = await store.find(token_hash)
        if again is None:  # pragma: no cover - purged in between
            raise InvalidGrant("the refresh token is invalid")
        return await _answer_rotated(services, again, now)
    services.audit.emit(
        "token.refreshed",
        actor=client.client_id,
        subject=user.user_id,
        client=client.client_id,
        details={
            "grant_type": "refresh_token",
            "jti": access.jti,
            "family_id": family.family_id,
            "scope": access.scope,
        },
    )
    return body


async def revoke_refresh_token(services: Services, token: str, client: Client, now: float) -> bool:
    """RFC 7009 for refresh tokens: revoke the family and its access tokens (§2.1: "If the token
    passed to the request is a refresh token ... the authorization server SHOULD also invalidate
    all access tokens based on the same authorization grant"). ``False`` if not a refresh token.

    Raises:
        UnauthorizedClient: a live refresh token of another client, as for access tokens (§2.1:
            "If this validation fails, the request is refused and the client is informed of
            the error"); a dead one is a no-op like any invalid token (§2.2).
    """
    found = await people(services).refresh.find(services.sealer.hash_secret(token))
    if found is None:
        return False
    if found.family.client_id != client.client_id:
        if _live(found, now):
            raise UnauthorizedClient("this token was not issued to the requesting client")
        return True
    await revoke_family(services, found.family.family_id, now)
    services.audit.emit(
        "refresh_token.revoked",
        subject=found.family.subject,
        client=client.client_id,
        details={"family_id": found.family.family_id},
    )
    return True


def _live(found: StoredRefresh, now: float) -> bool:
    """Whether a refresh token could still be redeemed (not rotated, revoked or expired)."""
    family = found.family
    return (
        family.revoked_at is None
        and found.token.rotated_at is None
        and now < min(found.token.expires_at, family.absolute_expires_at)
    )


async def introspect_refresh_token(
    services: Services, token: str, client: Client | None, now: float
) -> dict[str, Any] | None:
    """RFC 7662 for refresh tokens, answered only to the client they were issued to."""
    found = await people(services).refresh.find(services.sealer.hash_secret(token))
    if found is None:
        return None
    family = found.family
    if not _live(found, now) or client is None or client.client_id != family.client_id:
        return {"active": False}
    return {
        "active": True,
        "token_type": "refresh_token",
        "iss": services.settings.issuer,
        "client_id": family.client_id,
        "sub": family.subject,
        "scope": " ".join(family.scope),
        "iat": int(found.token.issued_at),
        "exp": int(min(found.token.expires_at, family.absolute_expires_at)),
    }


async def purge(services: Services, now: float) -> int:
    """Delete dead refresh tokens and families; drop old sealed responses."""
    return await people(services).refresh.purge_expired(now, keep_responses=RESPONSE_RETENTION)
