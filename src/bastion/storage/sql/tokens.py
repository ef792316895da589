"""Opaque access tokens and revoked JWT ids in the durable store."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import delete
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import update

from bastion.protocol.models import StoredAccessToken
from bastion.storage.protocols import Conflict
from bastion.storage.sql.engine import Database
from bastion.storage.sql.schema import access_tokens
from bastion.storage.sql.schema import family_jtis
from bastion.storage.sql.schema import revoked_jtis


def _token(row: Any) -> StoredAccessToken:
    return StoredAccessToken(
        token_hash=row.token_hash,
        jti=row.jti,
        client_id=row.client_id,
        subject=row.subject,
        scope=row.scope,
        audience=tuple(orjson.loads(row.audience)),
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        family_id=row.family_id,
        revoked_at=row.revoked_at,
        claims=orjson.loads(row.claims),
    )


class SQLTokenStore:
    """:class:`~bastion.storage.protocols.TokenStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_access_token(self, token: StoredAccessToken) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                insert(access_tokens).values(
                    token_hash=token.token_hash,
                    jti=token.jti,
                    client_id=token.client_id,
                    subject=token.subject,
                    scope=token.scope,
                    audience=orjson.dumps(list(token.audience)).decode(),
                    issued_at=token.issued_at,
                    expires_at=token.expires_at,
                    family_id=token.family_id,
                    revoked_at=token.revoked_at,
                    claims=orjson.dumps(token.claims).decode(),
                )
            )

    async def get_access_token(self, token_hash: str) -> StoredAccessToken | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(access_tokens).where(access_tokens.c.token_hash == token_hash))
            ).first()
        return _token(row) if row else None

    async def revoke_access_token(self, token_hash: str, now: float) -> StoredAccessToken | None:
        async with self._db.write() as conn:
            await conn.execute(
                update(access_tokens)
                .where(access_tokens.c.token_hash == token_hash, access_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = (
                await conn.execute(select(access_tokens).where(access_tokens.c.token_hash == token_hash))
            ).first()
        return _token(row) if row else None

    async def record_revoked_jti(self, jti: str, expires_at: float, now: float) -> None:
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    insert(revoked_jtis).values(jti=jti, expires_at=expires_at, revoked_at=now)
                )
        except Conflict:
            pass  # already recorded: revocation is idempotent

    async def is_jti_revoked(self, jti: str) -> bool:
        async with self._db.read() as conn:
            row = (await conn.execute(select(revoked_jtis.c.jti).where(revoked_jtis.c.jti == jti))).first()
        return row is not None

    async def revoked_jtis(self, now: float) -> list[tuple[str, float]]:
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(revoked_jtis.c.jti, revoked_jtis.c.expires_at).where(revoked_jtis.c.expires_at > now)
            )
            return [(row.jti, float(row.expires_at)) for row in rows]

    async def revoked_jtis_since(self, revoked_after: float, now: float) -> list[tuple[str, float]]:
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(revoked_jtis.c.jti, revoked_jtis.c.expires_at).where(
                    revoked_jtis.c.revoked_at > revoked_after, revoked_jtis.c.expires_at > now
                )
            )
            return [(row.jti, float(row.expires_at)) for row in rows]

    async def record_family_jti(self, jti: str, family_id: str, expires_at: float) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                insert(family_jtis).values(jti=jti, family_id=family_id, expires_at=expires_at)
            )

    async def family_tokens(self, family_id: str, now: float) -> list[tuple[str, float]]:
        async with self._db.read() as conn:
            jwts = await conn.execute(
                select(family_jtis.c.jti, family_jtis.c.expires_at).where(
                    family_jtis.c.family_id == family_id, family_jtis.c.expires_at > now
                )
            )
            opaque = await conn.execute(
                select(access_tokens.c.jti, access_tokens.c.expires_at).where(
                    access_tokens.c.family_id == family_id, access_tokens.c.expires_at > now
                )
            )
            return [(row.jti, row.expires_at) for row in [*jwts, *opaque]]

    async def revoke_family_opaque_tokens(self, family_id: str, now: float) -> int:
        async with self._db.write() as conn:
            result = await conn.execute(
                update(access_tokens)
                .where(access_tokens.c.family_id == family_id, access_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return int(result.rowcount)

    async def purge_expired(self, now: float) -> int:
        gone = 0
        async with self._db.write() as conn:
            for table in (access_tokens, family_jtis, revoked_jtis):
                gone += (await conn.execute(delete(table).where(table.c.expires_at < now))).rowcount
        return gone
