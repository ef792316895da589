"""Clients in the durable store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import delete
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import update

from bastion.protocol.models import Client
from bastion.protocol.models import TokenFormat
from bastion.storage.protocols import Conflict
from bastion.storage.protocols import NotFound
from bastion.storage.sql.engine import Database
from bastion.storage.sql.schema import clients


def _row(client: Client) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "name": client.name,
        "public": client.public,
        "secret_hash": client.secret_hash,
        "grant_types": orjson.dumps(sorted(client.grant_types)).decode(),
        "scopes": orjson.dumps(sorted(client.scopes)).decode(),
        "redirect_uris": orjson.dumps(list(client.redirect_uris)).decode(),
        "post_logout_redirect_uris": orjson.dumps(list(client.post_logout_redirect_uris)).decode(),
        "audience": client.audience,
        "token_format": client.token_format.value,
        "first_party": client.first_party,
        "disabled": client.disabled,
        "created_at": client.created_at,
        "updated_at": client.updated_at,
        "previous_secret_hash": client.previous_secret_hash,
        "previous_secret_expires_at": client.previous_secret_expires_at,
    }


def _client(row: Any) -> Client:
    return Client(
        client_id=row.client_id,
        name=row.name,
        public=row.public,
        secret_hash=row.secret_hash,
        grant_types=frozenset(orjson.loads(row.grant_types)),
        scopes=frozenset(orjson.loads(row.scopes)),
        redirect_uris=tuple(orjson.loads(row.redirect_uris)),
        post_logout_redirect_uris=tuple(orjson.loads(row.post_logout_redirect_uris)),
        audience=row.audience,
        token_format=TokenFormat(row.token_format),
        first_party=row.first_party,
        disabled=row.disabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        previous_secret_hash=row.previous_secret_hash,
        previous_secret_expires_at=row.previous_secret_expires_at,
    )


class SQLClientStore:
    """:class:`~bastion.storage.protocols.ClientStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_client(self, client: Client) -> None:
        try:
            async with self._db.write() as conn:
                await conn.execute(insert(clients).values(**_row(client)))
        except Conflict:
            raise Conflict(f"client {client.client_id!r} already exists") from None

    async def get_client(self, client_id: str) -> Client | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(clients).where(clients.c.client_id == client_id))).first()
        return _client(row) if row else None

    async def list_clients(self) -> Sequence[Client]:
        async with self._db.read() as conn:
            rows = (await conn.execute(select(clients).order_by(clients.c.created_at))).all()
        return [_client(row) for row in rows]

    async def update_client(self, client: Client) -> None:
        async with self._db.write() as conn:
            result = await conn.execute(
                update(clients).where(clients.c.client_id == client.client_id).values(**_row(client))
            )
            if result.rowcount == 0:
                raise NotFound(f"client {client.client_id!r} does not exist")

    async def delete_client(self, client_id: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(delete(clients).where(clients.c.client_id == client_id))
        return bool(result.rowcount)

    async def disabled_clients(self, changed_after: float) -> list[tuple[str, float]]:
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(clients.c.client_id, clients.c.updated_at).where(
                    clients.c.disabled.is_(True), clients.c.updated_at > changed_after
                )
            )
            return [(row.client_id, float(row.updated_at)) for row in rows]
