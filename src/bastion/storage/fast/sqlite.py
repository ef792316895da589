"""Fast state in a SQLite file: the embedded default, shared by every process on one machine.

Operations are single statements on a small table in WAL mode and run synchronously on the
caller's thread: a point read costs a few microseconds, less than a hop to a worker thread
would. Atomicity comes from SQLite itself (``DELETE … RETURNING`` for consume-once,
``INSERT … ON CONFLICT`` for add and incr). Publish/subscribe is a sequence-numbered message
table that subscribers poll. Redis replaces all of this when processes span machines.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.storage.protocols import StorageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires_at);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, body BLOB NOT NULL, at REAL NOT NULL);
"""
_SWEEP_EVERY = 2048
_MESSAGE_RETENTION = 300.0


def _as_bytes(value: object) -> bytes:
    """A stored value as bytes, whatever SQLite type holds it.

    Values are written as BLOBs, but a state file written by an older version holds counters as
    TEXT, and SQLite lets any column hold any type: reading never fails on the type.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float):
        return str(value).encode()
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    raise StorageError(f"state store holds a value of type {type(value).__name__}")


class SQLiteState:
    """:class:`~bastion.storage.protocols.FastState` in a SQLite file."""

    def __init__(
        self, path: str | Path, *, clock: Callable[[], float] = time.time, poll_interval: float = 0.2
    ) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._poll = poll_interval
        self._writes = 0
        try:
            self._db = sqlite3.connect(str(path), timeout=10, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the state file {path}: {exc}") from exc

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"state store failed: {exc}") from exc

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            now = self._clock()
            self._run("DELETE FROM kv WHERE expires_at <= ?", (now,))
            self._run("DELETE FROM messages WHERE at < ?", (now - _MESSAGE_RETENTION,))

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._run(
            "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
            (key, value, self._clock() + ttl),
        )
        self._wrote()

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        now = self._clock()
        rows = self._run(
            "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at "
            "WHERE kv.expires_at <= ? RETURNING 1",
            (key, value, now + ttl, now),
        )
        self._wrote()
        return bool(rows)

    async def get(self, key: str) -> bytes | None:
        rows = self._run("SELECT value FROM kv WHERE key = ? AND expires_at > ?", (key, self._clock()))
        return _as_bytes(rows[0][0]) if rows else None

    async def consume(self, key: str) -> bytes | None:
        rows = self._run("DELETE FROM kv WHERE key = ? RETURNING value, expires_at", (key,))
        if not rows or float(rows[0][1]) <= self._clock():
            return None
        return _as_bytes(rows[0][0])

    async def delete(self, key: str) -> None:
        self._run("DELETE FROM kv WHERE key = ?", (key,))

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        # The sum is written back as a BLOB, like every value: a TEXT value read back by
        # ``get`` was once a 500 on every sign-in after two failures. A value that is not a
        # canonical 64-bit integer, or a sum that overflows (SQLite turns it into a REAL), is
        # refused as Redis refuses it: the CASE yields NULL and the NOT NULL constraint fails.
        now = self._clock()
        try:
            rows = self._db.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (:key, :value, :expires) "
                "ON CONFLICT (key) DO UPDATE SET "
                "value = CASE WHEN kv.expires_at <= :now THEN excluded.value "
                "WHEN CAST(CAST(kv.value AS INTEGER) AS TEXT) = CAST(kv.value AS TEXT) "
                "AND typeof(CAST(kv.value AS INTEGER) + :amount) = 'integer' "
                "THEN CAST(CAST(CAST(kv.value AS INTEGER) + :amount AS TEXT) AS BLOB) "
                "ELSE NULL END, "
                "expires_at = CASE WHEN kv.expires_at <= :now THEN excluded.expires_at "
                "ELSE kv.expires_at END "
                "RETURNING value",
                {
                    "key": key,
                    "value": str(amount).encode(),
                    "expires": now + ttl,
                    "now": now,
                    "amount": amount,
                },
            ).fetchall()
        except sqlite3.IntegrityError as exc:
            raise StorageError(
                "incr on a value that is not an integer counter, or it would overflow"
            ) from exc
        except sqlite3.Error as exc:
            raise StorageError(f"state store failed: {exc}") from exc
        self._wrote()
        return int(_as_bytes(rows[0][0]))

    async def ttl(self, key: str) -> float | None:
        now = self._clock()
        rows = self._run("SELECT expires_at FROM kv WHERE key = ? AND expires_at > ?", (key, now))
        return float(rows[0][0]) - now if rows else None

    async def publish(self, channel: str, message: bytes) -> None:
        self._run(
            "INSERT INTO messages (channel, body, at) VALUES (?, ?, ?)", (channel, message, self._clock())
        )
        self._wrote()

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        rows = self._run("SELECT COALESCE(MAX(seq), 0) FROM messages")
        last = int(rows[0][0])
        while True:
            batch = self._run(
                "SELECT seq, body FROM messages WHERE seq > ? AND channel = ? ORDER BY seq", (last, channel)
            )
            for seq, body in batch:
                last = int(seq)
                yield _as_bytes(body)
            if not batch:
                await asyncio.sleep(self._poll)

    async def close(self) -> None:
        self._db.close()
