"""Open the configured stores. Called by the composition root (:mod:`bastion.cli`) only."""

from __future__ import annotations

from dataclasses import dataclass

from bastion.storage.protocols import FastState
from bastion.storage.protocols import StorageError
from bastion.storage.sql.clients import SQLClientStore
from bastion.storage.sql.engine import Database
from bastion.storage.sql.keys import SQLKeyStore
from bastion.storage.sql.tokens import SQLTokenStore


@dataclass
class Stores:
    """Every store a process uses, opened once at start-up and closed at shutdown."""

    db: Database
    clients: SQLClientStore
    keys: SQLKeyStore
    tokens: SQLTokenStore
    state: FastState

    async def close(self) -> None:
        """Close the fast-state store and the database pool."""
        await self.state.close()
        await self.db.close()


def open_state(url: str, *, pool_size: int = 10) -> FastState:
    """The fast-state backend for ``url`` (``memory://``, ``sqlite:///path``, ``redis://…``)."""
    if url.startswith("memory:"):
        from bastion.storage.fast.memory import MemoryState

        return MemoryState()
    if url.startswith("sqlite:///"):
        from bastion.storage.fast.sqlite import SQLiteState

        return SQLiteState(url.removeprefix("sqlite:///"))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from bastion.storage.fast.redis import RedisState

        return RedisState(url, pool_size=pool_size)
    raise StorageError(
        f"unsupported state URL {url!r}: use memory://, sqlite:///path or redis://host:port/db"
    )


def open_stores(
    database_url: str, state_url: str, *, pool_size: int = 10, schema: str | None = None
) -> Stores:
    """Open the durable store and the fast-state store (no I/O until first use)."""
    db = Database(database_url, pool_size=pool_size, schema=schema)
    return Stores(
        db=db,
        clients=SQLClientStore(db),
        keys=SQLKeyStore(db),
        tokens=SQLTokenStore(db),
        state=open_state(state_url, pool_size=pool_size),
    )
