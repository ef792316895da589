"""Signing keys in the durable store (private keys arrive already encrypted)."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import delete
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import update

from bastion.protocol.models import SigningKey
from bastion.storage.protocols import Conflict
from bastion.storage.sql.engine import Database
from bastion.storage.sql.schema import sealed_secrets
from bastion.storage.sql.schema import signing_keys
from bastion.storage.sql.schema_people import refresh_tokens


def _key(row: Any) -> SigningKey:
    return SigningKey(
        kid=row.kid,
        alg=row.alg,
        use=row.use,
        generation=row.generation,
        public_jwk=orjson.loads(row.public_jwk),
        created_at=row.created_at,
        activates_at=row.activates_at,
        revoked_at=row.revoked_at,
    )


class SQLKeyStore:
    """:class:`~bastion.storage.protocols.KeyStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_key(self, key: SigningKey, encrypted_private_key: bytes) -> None:
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    insert(signing_keys).values(
                        kid=key.kid,
                        alg=key.alg,
                        use=key.use,
                        generation=key.generation,
                        public_jwk=orjson.dumps(key.public_jwk).decode(),
                        private_key=encrypted_private_key,
                        created_at=key.created_at,
                        activates_at=key.activates_at,
                        revoked_at=key.revoked_at,
                    )
                )
        except Conflict:
            if await self._get(key.kid) is not None:
                raise Conflict(f"a signing key with kid {key.kid!r} already exists") from None
            raise Conflict(f"a {key.alg} key of generation {key.generation} already exists") from None

    async def _get(self, kid: str) -> SigningKey | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(signing_keys).where(signing_keys.c.kid == kid))).first()
        return None if row is None else _key(row)

    async def list_keys(self) -> Sequence[tuple[SigningKey, bytes]]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(signing_keys).order_by(signing_keys.c.alg, signing_keys.c.generation)
                )
            ).all()
        return [(_key(row), bytes(row.private_key)) for row in rows]

    async def revoke_key(self, kid: str, now: float) -> SigningKey | None:
        async with self._db.write() as conn:
            # The first revocation time is kept: revoking again changes nothing.
            await conn.execute(
                update(signing_keys)
                .where(signing_keys.c.kid == kid, signing_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = (await conn.execute(select(signing_keys).where(signing_keys.c.kid == kid))).first()
        return None if row is None else _key(row)

    async def delete_key(self, kid: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(delete(signing_keys).where(signing_keys.c.kid == kid))
        return bool(result.rowcount)

    async def get_sealed_secret(self, name: str) -> bytes | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(sealed_secrets.c.sealed).where(sealed_secrets.c.name == name))
            ).first()
        return None if row is None else bytes(row.sealed)

    async def reseal(
        self, reseal: Callable[[bytes, bytes], bytes], secrets: Mapping[str, bytes], now: float
    ) -> int:
        async with self._db.write() as conn:
            if not self._db.is_sqlite:
                # No process adds or changes a key until this commits (SQLite's BEGIN IMMEDIATE
                # already holds the database's write lock); reads go on.
                await conn.exec_driver_sql(
                    "LOCK TABLE signing_keys, sealed_secrets IN SHARE ROW EXCLUSIVE MODE"
                )
            count = 0
            keys = (await conn.execute(select(signing_keys.c.kid, signing_keys.c.private_key))).all()
            for kid, blob in keys:
                await conn.execute(
                    update(signing_keys)
                    .where(signing_keys.c.kid == kid)
                    .values(private_key=reseal(bytes(blob), kid.encode()))
                )
                count += 1
            responses = (
                await conn.execute(
                    select(refresh_tokens.c.token_hash, refresh_tokens.c.successor_response)
                    .where(refresh_tokens.c.successor_response.is_not(None))
                    .with_for_update()
                )
            ).all()
            for token_hash, blob in responses:
                await conn.execute(
                    update(refresh_tokens)
                    .where(refresh_tokens.c.token_hash == token_hash)
                    .values(successor_response=reseal(bytes(blob), token_hash.encode()))
                )
                count += 1
            for name, sealed in secrets.items():
                await conn.execute(delete(sealed_secrets).where(sealed_secrets.c.name == name))
                await conn.execute(insert(sealed_secrets).values(name=name, sealed=sealed, updated_at=now))
        return count
