"""Address bans in the durable store (:class:`~bastion.storage.ban_protocols.BanStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete
from sqlalchemy import insert
from sqlalchemy import select

from bastion.storage.ban_protocols import Ban
from bastion.storage.sql.engine import Database
from bastion.storage.sql.schema_bans import bans


def _ban(row: Any) -> Ban:
    return Ban(
        network=row.network,
        reason=row.reason,
        source="auto" if row.source == "auto" else "manual",
        since=row.since,
        until=row.until,
        repeat=row.repeat,
        kind=row.kind,
    )


class SQLBanStore:
    """:class:`~bastion.storage.ban_protocols.BanStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put_ban(self, ban: Ban) -> None:
        # Delete then insert in one transaction: the same statements on both engines, and two
        # writers of one network serialise on the primary key.
        async with self._db.write() as conn:
            await conn.execute(delete(bans).where(bans.c.network == ban.network))
            await conn.execute(
                insert(bans).values(
                    network=ban.network,
                    reason=ban.reason,
                    source=ban.source,
                    kind=ban.kind,
                    since=ban.since,
                    until=ban.until,
                    repeat=ban.repeat,
                )
            )

    async def remove_ban(self, network: str) -> Ban | None:
        async with self._db.write() as conn:
            row = (await conn.execute(select(bans).where(bans.c.network == network))).first()
            if row is None:
                return None
            await conn.execute(delete(bans).where(bans.c.network == network))
        return _ban(row)

    async def active_bans(self, now: float) -> Sequence[Ban]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(bans).where(bans.c.until > now).order_by(bans.c.since, bans.c.network)
                )
            ).all()
        return [_ban(row) for row in rows]

    async def purge_expired_bans(self, now: float) -> int:
        async with self._db.write() as conn:
            result = await conn.execute(delete(bans).where(bans.c.until <= now))
        return int(result.rowcount or 0)
