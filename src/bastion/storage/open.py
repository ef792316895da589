"""Open the configured stores. Called by the composition root (:mod:`bastion.cli`) only."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Literal

from bastion.storage.protocols import FastState
from bastion.storage.protocols import StorageError
from bastion.storage.sql.audit import SQLAuditStore
from bastion.storage.sql.bans import SQLBanStore
from bastion.storage.sql.clients import SQLClientStore
from bastion.storage.sql.engine import Database
from bastion.storage.sql.engine import failure_reason
from bastion.storage.sql.keys import SQLKeyStore
from bastion.storage.sql.tokens import SQLTokenStore

#: Seconds a readiness check waits for one store.
CHECK_TIMEOUT = 3.0

Store = Literal["database", "state"]


class StoreError(StorageError):
    """One of the configured stores is unusable; ``store`` says which."""

    def __init__(self, store: Store, message: str) -> None:
        super().__init__(message)
        self.store: Store = store


@dataclass
class Stores:
    """Every store a process uses, opened once at start-up and closed at shutdown."""

    db: Database
    clients: SQLClientStore
    keys: SQLKeyStore
    tokens: SQLTokenStore
    state: FastState
    #: The gateway's address bans (durable record), on :attr:`db`.
    bans: SQLBanStore = field(init=False)
    #: The audit trail's durable record, on :attr:`db`.
    audit: SQLAuditStore = field(init=False)

    def __post_init__(self) -> None:
        self.bans = SQLBanStore(self.db)
        self.audit = SQLAuditStore(self.db)

    async def check(self) -> dict[Store, str | None]:
        """Whether each store answers now: ``None`` when it does, else the reason it does not.

        The database runs ``SELECT 1``; the fast state reads a key. Each check waits at most
        :data:`CHECK_TIMEOUT` seconds.
        """
        return {
            "database": await _check(self.db.ping()),
            "state": await _check(self._read_state(), "cannot use the fast-state store: "),
        }

    async def _read_state(self) -> None:
        await self.state.get("readyz")

    async def require(self) -> None:
        """Raise :class:`StoreError` naming the first store that does not answer."""
        for store, problem in (await self.check()).items():
            if problem is not None:
                raise StoreError(store, problem)

    async def close(self) -> None:
        """Close the fast-state store and the database pool."""
        await self.state.close()
        await self.db.close()


async def _check(probe: Coroutine[Any, Any, None], prefix: str = "") -> str | None:
    """``None`` if ``probe`` completes in time, else why it did not (``prefix`` + the driver's reason)."""
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except TimeoutError:
        return f"{prefix}timed out after {CHECK_TIMEOUT:g} s"
    except StorageError as exc:
        cause = exc.__cause__
        return f"{prefix}{failure_reason(cause) if prefix and cause is not None else exc}"
    return None


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

        try:
            return RedisState(url, pool_size=pool_size)
        except ValueError as exc:
            raise StorageError(f"not a valid state URL: {exc}") from None
    raise StorageError(
        f"unsupported state URL {url!r}: use memory://, sqlite:///path or redis://host:port/db"
    )


def open_stores(
    database_url: str, state_url: str, *, pool_size: int = 10, schema: str | None = None
) -> Stores:
    """Open the durable store and the fast-state store (no I/O until first use).

    Raises:
        StoreError: a URL is invalid or unsupported (``store`` names which).
    """
    try:
        db = Database(database_url, pool_size=pool_size, schema=schema)
    except StorageError as exc:
        raise StoreError("database", str(exc)) from None
    try:
        state = open_state(state_url, pool_size=pool_size)
    except StorageError as exc:
        raise StoreError("state", str(exc)) from None
    return Stores(
        db=db, clients=SQLClientStore(db), keys=SQLKeyStore(db), tokens=SQLTokenStore(db), state=state
    )
