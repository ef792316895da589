"""Authorization codes: issue at the authorization endpoint, redeem at the token endpoint.

Codes carry 256 random bits and live in the fast-state store under their keyed hash for
``code_ttl`` seconds; redemption is the store's atomic ``consume``. A redeemed code leaves a
marker (``code-used:<hash>`` → the family id of what was issued) so that a replay revokes every
token of the first redemption; a replay racing the first redemption raises a flag the first
redemption checks before answering (see the lifecycle in
:mod:`bastion.protocol.rfc6749.grants.authorization_code`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from bastion.protocol import jose
from bastion.protocol.errors import InvalidGrant
from bastion.protocol.models import Client
from bastion.protocol.models import User
from bastion.protocol.oidc.core import id_token_claims
from bastion.protocol.rfc6749.authorize import AuthorizationRequest
from bastion.protocol.rfc6749.grants.authorization_code import AuthorizationCode
from bastion.protocol.rfc6749.grants.authorization_code import parse_code_token_request
from bastion.protocol.rfc6749.grants.authorization_code import validate_redemption
from bastion.protocol.rfc6749.grants.client_credentials import resolve_audience
from bastion.protocol.rfc6749.grants.refresh_token import RefreshFamily
from bastion.protocol.rfc6749.grants.refresh_token import RefreshToken
from bastion.protocol.rfc6749.grants.refresh_token import issues_refresh_token
from bastion.protocol.rfc6749.grants.refresh_token import token_expiry
from bastion.services import sessions
from bastion.services.container import Services
from bastion.services.tokens import IssuedToken
from bastion.services.users import people

CODE_PREFIX = "code:"
USED_PREFIX = "code-used:"
REPLAYED_PREFIX = "code-replayed:"


def new_family_id() -> str:
    """A family id: 128 random bits."""
    return secrets.token_urlsafe(16)


async def issue_code(
    services: Services,
    *,
    request: AuthorizationRequest,
    user: User,
    scope: tuple[str, ...],
    sid: str,
    auth_time: float,
    now: float,
) -> str:
    """Create and store a code for ``request``; returns the code (256 random bits)."""
    code = secrets.token_urlsafe(32)
    ttl = services.settings.code_ttl
    record = AuthorizationCode(
        client_id=request.client_id,
        redirect_uri=request.redirect_uri,
        scope=scope,
        code_challenge=request.code_challenge,
        subject=user.user_id,
        sid=sid,
        auth_time=auth_time,
        issued_at=now,
        expires_at=now + ttl,
        nonce=request.nonce,
    )
    await services.stores.state.set(CODE_PREFIX + services.sealer.hash_secret(code), record.to_json(), ttl)
    services.audit.emit(
        "authorization_code.issued",
        actor=user.user_id,
        subject=user.user_id,
        client=request.client_id,
        details={"scope": " ".join(scope)},
    )
    return code


def sign_id_token(
    services: Services,
    *,
    client: Client,
    subject: str,
    sid: str,
    auth_time: float,
    now: float,
    nonce: str | None,
    access_token: str,
) -> str:
    """An ID token (OIDC Core §2) signed with the active ``id_token_algorithm`` key."""
    settings = services.settings
    key = services.keys.signing_key(settings.id_token_algorithm, now)
    claims = id_token_claims(
        issuer=settings.issuer,
        subject=subject,
        client_id=client.client_id,
        issued_at=int(now),
        ttl=settings.id_token_ttl,
        auth_time=auth_time,
        sid=sid,
        alg=key.alg,
        nonce=nonce,
        access_token=access_token,
    )
    return jose.encode_jwt(key.alg, key.private_key, {"typ": "JWT", "kid": key.kid}, claims)


async def issue_access_token(
    services: Services,
    *,
    client: Client,
    user: User,
    scope: tuple[str, ...],
    params: Mapping[str, str],
    auth_time: float,
    family_id: str,
    now: float,
) -> IssuedToken:
    """An access token for ``user`` carrying the RBAC result (``scope``, ``roles``)."""
    extra: dict[str, Any] = {"auth_time": int(auth_time)}
    if user.roles:
        extra["roles"] = sorted(user.roles)
    return await services.tokens.issue_access_token(
        client=client,
        subject=user.user_id,
        scope=" ".join(scope),
        audience=resolve_audience(client, params.get("resource"), services.settings.issuer),
        now=now,
        extra_claims=extra,
        family_id=family_id,
    )


def token_response(issued: IssuedToken, *, refresh_token: str | None, id_token: str | None) -> dict[str, Any]:
    """The RFC 6749 §5.1 body (plus ``id_token``, OIDC Core §3.1.3.3)."""
    body: dict[str, Any] = {
        "access_token": issued.token,
        "token_type": issued.token_type,
        "expires_in": issued.expires_in,
        "scope": issued.scope,
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    if id_token is not None:
        body["id_token"] = id_token
    return body


async def revoke_family(services: Services, family_id: str, now: float) -> None:
    """Revoke a grant: its refresh tokens and every access token issued from it."""
    await people(services).refresh.revoke_family(family_id, now)
    await services.tokens.revoke_family_access_tokens(family_id, now)


async def _user_for(services: Services, subject: str) -> User:
    user = await people(services).users.get_user(subject)
    if user is None or user.disabled:
        raise InvalidGrant("the user is no longer allowed to sign in")
    return user


async def _replayed(services: Services, code_hash: str, now: float) -> None:
    state = services.stores.state
    marker = await state.get(USED_PREFIX + code_hash)
    if marker is None:
        return
    used = orjson.loads(marker)
    await state.set(REPLAYED_PREFIX + code_hash, b"1", services.settings.code_ttl + 60)
    await revoke_family(services, used["family_id"], now)
    services.audit.emit(
        "authorization_code.replayed",
        outcome="denied",
        client=used["client_id"],
        reason="code_reused",
        details={"family_id": used["family_id"]},
    )


async def exchange_code(
    services: Services, client: Client, params: Mapping[str, str], now: float
) -> dict[str, Any]:
    """The ``authorization_code`` grant at the token endpoint (RFC 6749 §4.1.3, §4.1.4).

    Raises:
        InvalidRequest: no ``code``.
        InvalidGrant: unknown, expired, replayed or mismatched code, failed PKCE, ended login
            session, or a user who may no longer sign in.
    """
    request = parse_code_token_request(params)
    state = services.stores.state
    settings = services.settings
    code_hash = services.sealer.hash_secret(request.code)
    raw = await state.consume(CODE_PREFIX + code_hash)
    if raw is None:
        await _replayed(services, code_hash, now)
        raise InvalidGrant("the authorization code is invalid, expired or already used")
    record = AuthorizationCode.from_json(raw)
    family_id = new_family_id()
    refresh_ttl = settings.refresh_token_idle_ttl if issues_refresh_token(client, record.scope) else 0
    marker_ttl = max(settings.access_token_ttl, refresh_ttl) + 60
    await state.set(
        USED_PREFIX + code_hash,
        orjson.dumps({"family_id": family_id, "client_id": record.client_id}),
        marker_ttl,
    )
    validate_redemption(record, client, request, now)
    # The code is bound to the login session: signing out before redemption voids it.
    if not await sessions.alive(services, record.sid):
        raise InvalidGrant("the login session of this code has ended")
    user = await _user_for(services, record.subject)
    access = await issue_access_token(
        services,
        client=client,
        user=user,
        scope=record.scope,
        params=params,
        auth_time=record.auth_time,
        family_id=family_id,
        now=now,
    )
    refresh_token = None
    if refresh_ttl:
        refresh_token = secrets.token_urlsafe(32)
        family = RefreshFamily(
            family_id=family_id,
            client_id=client.client_id,
            subject=user.user_id,
            scope=record.scope,
            sid=record.sid,
            auth_time=record.auth_time,
            created_at=now,
            absolute_expires_at=now + settings.refresh_token_absolute_ttl,
        )
        first = RefreshToken(
            token_hash=services.sealer.hash_secret(refresh_token),
            family_id=family_id,
            issued_at=now,
            expires_at=token_expiry(now, settings.refresh_token_idle_ttl, family),
        )
        await people(services).refresh.create_family(family, first)
    id_token = None
    if "openid" in record.scope:
        id_token = sign_id_token(
            services,
            client=client,
            subject=user.user_id,
            sid=record.sid,
            auth_time=record.auth_time,
            now=now,
            nonce=record.nonce,
            access_token=access.token,
        )
    if await state.get(REPLAYED_PREFIX + code_hash) is not None:
        # A replay arrived while this redemption was issuing: revoke what it issued.
        await revoke_family(services, family_id, now)
        raise InvalidGrant("the authorization code was used twice")
    services.audit.emit(
        "token.issued",
        actor=client.client_id,
        subject=user.user_id,
        client=client.client_id,
        details={
            "grant_type": "authorization_code",
            "jti": access.jti,
            "family_id": family_id if refresh_token else None,
            "scope": access.scope,
        },
    )
    return token_response(access, refresh_token=refresh_token, id_token=id_token)
