"""One async SQLAlchemy engine for SQLite and PostgreSQL.

``sqlite:///path`` and ``postgresql://…`` URLs are accepted as users write them; the async
driver (aiosqlite, asyncpg) is chosen here. SQLite runs in WAL mode with a busy timeout, and
write transactions start with ``BEGIN IMMEDIATE`` so that two writers queue instead of failing
on a lock upgrade.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine

from bastion.storage.protocols import Conflict
from bastion.storage.protocols import StorageError

#: Seconds to wait for a PostgreSQL connection before the store counts as unreachable.
CONNECT_TIMEOUT = 10.0


def failure_reason(exc: BaseException) -> str:
    """A short, secret-free reason for a driver or network failure (for one-line errors)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(exc, OSError) and (exc.errno or exc.strerror):
        reason = os.strerror(exc.errno) if exc.errno else str(exc.strerror)
        return reason[:1].lower() + reason[1:]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # The asyncpg adapter prefixes the driver's class: "<class '...'>: message".
    if text.startswith("<class ") and ">: " in text:
        text = text.split(">: ", 1)[1]
    return text


def async_url(url: str) -> str:
    """Map a user-facing URL to its async driver.

    Raises:
        StorageError: the URL does not parse or names an unsupported database.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StorageError(f"not a valid database URL: {failure_reason(exc)}") from None
    driver = {
        "sqlite": "sqlite+aiosqlite",
        "postgresql": "postgresql+asyncpg",
        "postgres": "postgresql+asyncpg",
    }
    backend = parsed.drivername.split("+", 1)[0]
    if backend not in driver:
        raise StorageError(
            f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:/// or postgresql://"
        )
    return parsed.set(drivername=driver[backend]).render_as_string(hide_password=False)


class Database:
    """An engine plus the read/write transaction helpers every SQL store uses."""

    def __init__(self, url: str, *, pool_size: int = 10, schema: str | None = None) -> None:
        """An engine for ``url`` (no connection is made until first use).

        Raises:
            StorageError: the URL is invalid, or the SQLite file's directory cannot be created.
        """
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            database = make_url(self.url).database
            if database and database != ":memory:":
                try:
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StorageError(
                        f"cannot create the directory of {database}: {failure_reason(exc)}"
                    ) from None
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
            kwargs["pool_pre_ping"] = True
            connect_args: dict[str, Any] = {"timeout": CONNECT_TIMEOUT}
            if schema:
                connect_args["server_settings"] = {"search_path": schema}
            kwargs["connect_args"] = connect_args
        try:
            self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        except (ArgumentError, ValueError, ImportError) as exc:
            raise StorageError(f"not a valid database URL: {failure_reason(exc)}") from None
        if self.is_sqlite:
            _configure_sqlite(self.engine)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (a deferred transaction, rolled back at the end)."""
        try:
            async with self.engine.connect() as conn:
                yield conn
        except (TimeoutError, SQLAlchemyError, OSError) as exc:
            # A refused or dropped connection surfaces from the driver as a bare OSError.
            raise StorageError(f"database read failed: {type(exc).__name__}") from exc

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed when the block exits without an exception."""
        try:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(bastion_write=True)
                async with conn.begin():
                    yield conn
        except IntegrityError as exc:
            raise Conflict("a record with the same identity already exists") from exc
        except (TimeoutError, SQLAlchemyError, OSError) as exc:
            raise StorageError(f"database write failed: {type(exc).__name__}") from exc

    async def ping(self) -> None:
        """Connect and run ``SELECT 1``.

        Raises:
            StorageError: the database cannot be reached or refuses the connection; the message
                says why (refused, unknown role, timed out) without the URL's password.
        """
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except (TimeoutError, SQLAlchemyError, OSError) as exc:
            where = make_url(self.url).render_as_string(hide_password=True).replace("+asyncpg", "")
            where = where.replace("+aiosqlite", "")
            raise StorageError(f"cannot use the database {where}: {failure_reason(exc)}") from exc

    async def close(self) -> None:
        """Dispose of the pool."""
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (the driver's implicit BEGIN is
        # always DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("bastion_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
