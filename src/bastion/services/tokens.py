"""Access tokens: issue (RFC 9068 JWT or opaque), introspect (RFC 7662), revoke (RFC 7009).

Revocation is recorded twice: durably first (the revoked ``jti`` until the token's ``exp`` plus
:data:`~bastion.tokens.MAX_LEEWAY`), then in the fast-state store with a TTL, where every
gateway sharing the store reads it; a message on :data:`REVOCATION_CHANNEL` lets validators
flush their caches. The durable record is the truth: introspection and UserInfo consult it
whenever the fast store does not know a ``jti`` (so a Redis restart without persistence, a
``FLUSHALL`` or a wiped state file brings no revoked token back), and followers that lost the
feed catch up from it (:meth:`TokenService.revocations`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from bastion.ops.audit import AuditLog
from bastion.protocol import jose
from bastion.protocol.errors import UnauthorizedClient
from bastion.protocol.models import Client
from bastion.protocol.models import StoredAccessToken
from bastion.protocol.models import TokenClaims
from bastion.protocol.models import TokenFormat
from bastion.services.keys import KeyService
from bastion.settings import AuthorizationServerSettings
from bastion.storage.protocols import FastState
from bastion.storage.protocols import TokenStore
from bastion.tokens import MAX_LEEWAY

#: Fast-state channel carrying ``{"jti": ..., "exp": ...}`` for every revoked access token, and
#: ``{"client_id": ..., "before": ..., "exp": ...}`` for every disabled client (its tokens issued
#: before ``before`` are refused until ``exp``).
REVOCATION_CHANNEL = "revocations"
_REVOKED_PREFIX = "revoked:"
_JWT_TYP = "at+jwt"
#: Validators elsewhere accept a token up to their leeway after ``exp`` (clock skew), and no
#: validator may be configured with more than ``MAX_LEEWAY`` (the gateway's ``leeway`` setting
#: is bounded by it), so a revocation is remembered that much longer. This server's own clock
#: needs no leeway.
_LEEWAY = MAX_LEEWAY
_CACHE_MAX = 50_000


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """An access token just issued."""

    token: str
    jti: str
    expires_at: int
    expires_in: int
    scope: str
    token_type: str = "Bearer"


#: Extra token kinds (refresh tokens) plug into introspection and revocation through these.
Introspector = Callable[[str, Client | None, float], Awaitable[dict[str, Any] | None]]
Revoker = Callable[[str, Client, float], Awaitable[bool]]


class TokenIds:
    """Unique token ids (128 random bits each), drawn from the OS generator in batches: one
    system call serves 256 ids instead of one."""

    __slots__ = ("_buffer", "_offset")

    _SIZE = 16
    _BATCH = 256

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    def next(self) -> str:
        """A fresh id, URL-safe base64 without padding (22 characters)."""
        if self._offset >= len(self._buffer):
            self._buffer = os.urandom(self._SIZE * self._BATCH)
            self._offset = 0
        start = self._offset
        self._offset = start + self._SIZE
        return jose.b64url_encode(self._buffer[start : start + self._SIZE])


def revoked_key(jti: str) -> str:
    """The fast-state key that marks access token ``jti`` revoked (read by gateways too)."""
    return _REVOKED_PREFIX + jti


def opaque_hash(token: str) -> str:
    """The storage key of an opaque access token: SHA-256 of 256 random bits needs no key."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    """Issues, introspects and revokes access tokens."""

    def __init__(
        self,
        settings: AuthorizationServerSettings,
        keys: KeyService,
        tokens: TokenStore,
        state: FastState,
        audit: AuditLog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._keys = keys
        self._tokens = tokens
        self._state = state
        self._audit = audit
        self._clock = clock
        #: token → (kid, claims) of JWTs whose signature verified; the kid is rechecked on a hit.
        self._verified: dict[str, tuple[str, dict[str, Any]]] = {}
        self._ids = TokenIds()
        self.introspectors: list[Introspector] = []
        self.revokers: list[Revoker] = []

    # -- issuing -----------------------------------------------------------------------------

    async def issue_access_token(
        self,
        *,
        client: Client,
        subject: str,
        scope: str,
        audience: tuple[str, ...],
        now: float | None = None,
        extra_claims: dict[str, Any] | None = None,
        family_id: str | None = None,
    ) -> IssuedToken:
        """Issue an access token in the client's format and record what must be recorded."""
        now = self._clock() if now is None else now
        ttl = self.settings.access_token_ttl
        claims = TokenClaims(
            issuer=self.settings.issuer,
            subject=subject,
            client_id=client.client_id,
            audience=audience,
            scope=scope,
            issued_at=int(now),
            expires_at=int(now) + ttl,
            jti=self._ids.next(),
            extra=dict(extra_claims or {}),
        )
        if client.token_format is TokenFormat.OPAQUE:
            token = secrets.token_urlsafe(32)
            await self._tokens.add_access_token(
                StoredAccessToken(
                    token_hash=opaque_hash(token),
                    jti=claims.jti,
                    client_id=client.client_id,
                    subject=subject,
                    scope=scope,
                    audience=audience,
                    issued_at=now,
                    expires_at=claims.expires_at,
                    family_id=family_id,
                    claims=claims.extra,
                )
            )
        else:
            key = self._keys.signing_key(self.settings.access_token_algorithm, now)
            token = jose.encode_jwt(
                key.alg, key.private_key, {"typ": _JWT_TYP, "kid": key.kid}, claims.to_jwt_claims()
            )
            if family_id is not None:
                await self._tokens.record_family_jti(claims.jti, family_id, claims.expires_at)
        return IssuedToken(
            token=token, jti=claims.jti, expires_at=claims.expires_at, expires_in=ttl, scope=scope
        )

    # -- introspection -----------------------------------------------------------------------

    def _verify_jwt(self, token: str, now: float) -> dict[str, Any] | None:
        """Claims of a JWT access token this server signed and that is unexpired, else ``None``."""
        cached = self._verified.get(token)
        if cached is not None:
            kid, claims = cached
            # A key revoked since (`bastion keys revoke`) takes every token it signed with it.
            return claims if claims["exp"] > now and not self._keys.is_revoked(kid) else None
        try:
            parsed = jose.parse_compact(token)
        except (jose.JOSEError, UnicodeError):
            return None
        header = parsed.header
        if (
            str(header.get("typ", "")).lower() not in (_JWT_TYP, "application/" + _JWT_TYP)
            or "crit" in header
        ):
            return None
        found = self._keys.public_key(str(header.get("kid", "")), now)
        if found is None or found[0].alg != header["alg"]:
            return None
        if not jose.verify(header["alg"], found[1], parsed.signing_input, parsed.signature):
            return None
        try:
            claims = orjson.loads(parsed.payload)
        except orjson.JSONDecodeError:
            return None
        if (
            not isinstance(claims, dict)
            or claims.get("iss") != self.settings.issuer
            or not isinstance(claims.get("exp"), int)
            or claims["exp"] <= now
        ):
            return None
        if len(self._verified) >= _CACHE_MAX:
            self._verified.pop(next(iter(self._verified)))  # evict the oldest entry
        self._verified[token] = (found[0].kid, claims)
        return claims

    async def is_revoked(self, jti: str) -> bool:
        """Whether the access token ``jti`` was revoked.

        The fast store answers "revoked" alone; "not revoked" is confirmed by the durable
        record, which a fast-store reset cannot lose (one primary-key read per live token
        introspected, the same cost as an opaque token's lookup).
        """
        if await self._state.get(revoked_key(jti)) is not None:
            return True
        return await self._tokens.is_jti_revoked(jti)

    async def introspect(
        self, token: str, client: Client | None = None, now: float | None = None
    ) -> dict[str, Any]:
        """The RFC 7662 §2.2 response for ``token``: ``{"active": false}`` unless it is live."""
        now = self._clock() if now is None else now
        claims = self._verify_jwt(token, now) if token.count(".") == 2 else None
        if claims is not None:
            if await self.is_revoked(str(claims.get("jti", ""))):
                return {"active": False}
            return {"active": True, "token_type": "Bearer", **claims}
        if token.count(".") != 2:
            stored = await self._tokens.get_access_token(opaque_hash(token))
            if stored is not None:
                if stored.revoked_at is not None or stored.expires_at <= now:
                    return {"active": False}
                response: dict[str, Any] = {
                    "active": True,
                    "token_type": "Bearer",
                    "iss": self.settings.issuer,
                    "sub": stored.subject,
                    "client_id": stored.client_id,
                    "aud": stored.audience[0] if len(stored.audience) == 1 else list(stored.audience),
                    "scope": stored.scope,
                    "iat": int(stored.issued_at),
                    "exp": int(stored.expires_at),
                    "jti": stored.jti,
                }
                response.update(stored.claims)
                return response
        for introspector in self.introspectors:
            result = await introspector(token, client, now)
            if result is not None:
                return result
        return {"active": False}

    # -- revocation --------------------------------------------------------------------------

    async def revoke_jti(
        self,
        jti: str,
        expires_at: float,
        now: float | None = None,
        *,
        subject: str | None = None,
        client: str | None = None,
        family_id: str | None = None,
    ) -> None:
        """Record that access token ``jti`` is revoked until it expires, and announce it
        (audited with the token's ``subject``, ``client`` and refresh ``family_id`` when known)."""
        now = self._clock() if now is None else now
        remaining = expires_at - now + _LEEWAY
        if remaining <= 0:
            return
        await self._tokens.record_revoked_jti(jti, expires_at + _LEEWAY, now)
        await self._state.set(revoked_key(jti), b"1", remaining)
        await self._state.publish(REVOCATION_CHANNEL, orjson.dumps({"jti": jti, "exp": int(expires_at)}))
        details = {"jti": jti} if family_id is None else {"jti": jti, "family_id": family_id}
        self._audit.emit("token.revoked", subject=subject, client=client, details=details)

    async def revoke_family_access_tokens(self, family_id: str, now: float | None = None) -> int:
        """Revoke every access token issued from a refresh-token family."""
        now = self._clock() if now is None else now
        tokens = await self._tokens.family_tokens(family_id, now)
        await self._tokens.revoke_family_opaque_tokens(family_id, now)
        for jti, expires_at in tokens:
            await self.revoke_jti(jti, expires_at, now, family_id=family_id)
        return len(tokens)

    async def revoke(self, token: str, client: Client, now: float | None = None) -> None:
        """RFC 7009 §2.1: revoke ``token`` if it was issued to ``client``.

        "invalid tokens do not cause an error response" (§2.2): unknown, expired or malformed
        tokens are a no-op. A live token of another client is refused (§2.1: "If this validation
        fails, the request is refused and the client is informed of the error").

        Raises:
            UnauthorizedClient: the token was issued to another client.
        """
        now = self._clock() if now is None else now
        if token.count(".") == 2:
            claims = self._verify_jwt(token, now)
            if claims is not None:
                self._check_owner(str(claims.get("client_id")), client)
                await self.revoke_jti(
                    str(claims["jti"]),
                    float(claims["exp"]),
                    now,
                    subject=str(claims.get("sub")),
                    client=client.client_id,
                )
            return
        stored = await self._tokens.get_access_token(opaque_hash(token))
        if stored is not None:
            if stored.expires_at > now:
                self._check_owner(stored.client_id, client)
                await self._tokens.revoke_access_token(stored.token_hash, now)
                await self.revoke_jti(
                    stored.jti, stored.expires_at, now, subject=stored.subject, client=client.client_id
                )
            return
        for revoker in self.revokers:
            if await revoker(token, client, now):
                return

    @staticmethod
    def _check_owner(owner: str, client: Client) -> None:
        if owner != client.client_id:
            raise UnauthorizedClient("this token was not issued to the requesting client")

    async def revoke_client(self, client_id: str, now: float | None = None) -> None:
        """Announce that ``client_id`` was disabled: every token issued to it until now is
        refused wherever the feed reaches (gateways, services), until the last one has expired.

        The durable record is the client's own (``disabled``, ``updated_at``), written by the
        caller first; followers catch up from it (:meth:`disabled_clients`).
        """
        now = self._clock() if now is None else now
        until = now + self.settings.access_token_ttl + _LEEWAY
        body = orjson.dumps({"client_id": client_id, "before": now, "exp": until})
        await self._state.publish(REVOCATION_CHANNEL, body)
        self._audit.emit(
            "client.tokens_revoked", subject=client_id, client=client_id, details={"before": now}
        )

    def revocation_memory(self) -> float:
        """How long after being issued a token can still be accepted somewhere (its lifetime
        plus the largest leeway): how long a client's disable must be remembered."""
        return self.settings.access_token_ttl + _LEEWAY

    async def revocations(self, now: float | None = None) -> list[tuple[str, float]]:
        """The durable list of revoked, unexpired ``jti`` values, each with the time it may be
        forgotten (what followers catch up from)."""
        now = self._clock() if now is None else now
        return list(await self._tokens.revoked_jtis(now))

    async def warm_revocations(self, jtis: list[tuple[str, float]] | None = None) -> int:
        """Copy durable revocations into the fast-state store (after it lost them: a restart
        without persistence, a wiped state file). Returns how many were copied."""
        now = self._clock()
        if jtis is None:
            jtis = await self.revocations(now)
        return await warm_revocations(self._state, jtis, now)


async def warm_revocations(state: FastState, jtis: Iterable[tuple[str, float]], now: float) -> int:
    """Mark each unexpired ``(jti, until)`` revoked in ``state``; returns how many were marked."""
    copied = 0
    for jti, until in jtis:
        if until > now:
            await state.set(revoked_key(jti), b"1", until - now)
            copied += 1
    return copied
