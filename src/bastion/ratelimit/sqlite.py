"""Rate-limit buckets in a SQLite file: the embedded default, exact across the workers of one
machine (``bastion serve --workers N``).

Every worker decides on the same table, in the state file beside the fast state, so a limit
holds for the whole server, not per worker. A decision is one ``INSERT … ON CONFLICT DO UPDATE
… WHERE … RETURNING`` statement: SQLite serialises writers, so the read-decide-write is atomic
without a transaction of our own (a group of several rates takes one ``BEGIN IMMEDIATE``
transaction). The clock is this machine's wall clock, the one every worker reads.

Statements run synchronously on the event-loop thread, as the fast-state store's do: one costs
a few microseconds, less than a hop to a worker thread. A file locked for longer than
``timeout`` makes the decision unavailable (the route's ``on_error``).

The alternative, dividing each limit by the worker count and deciding in memory, was measured
and rejected (``docs/gateway.md``, "Rate limits"): the kernel hands a keep-alive connection to
one worker, so a client was held to 1/N of its limit.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bastion.ratelimit import LimiterUnavailable
from bastion.ratelimit.gcra import MICROS
from bastion.ratelimit.gcra import Rate
from bastion.ratelimit.gcra import Refusal
from bastion.ratelimit.gcra import conforms
from bastion.ratelimit.gcra import decide_all

__all__ = ["SQLiteLimiter"]

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS ratelimit (key TEXT PRIMARY KEY, tat INTEGER NOT NULL) WITHOUT ROWID"
)
#: Admit and store, only when the request conforms; no row returned: refused.
_DECIDE: Final = (
    "INSERT INTO ratelimit (key, tat) VALUES (:key, :now + :interval) "
    "ON CONFLICT (key) DO UPDATE SET tat = MAX(tat, :now) + :interval "
    "WHERE MAX(tat, :now) - :tolerance <= :now RETURNING tat"
)
_SWEEP_EVERY: Final = 16_384


class SQLiteLimiter:
    """:class:`~bastion.ratelimit.Limiter` in a SQLite file shared by local processes."""

    def __init__(
        self, path: str | Path, *, clock: Callable[[], float] = time.time, timeout: float = 0.5
    ) -> None:
        """Keep the buckets in table ``ratelimit`` of the SQLite file at ``path``.

        Raises:
            LimiterUnavailable: the file cannot be opened.
        """
        self._clock = clock
        #: Requests admitted (and counted) so far by this process.
        self.admitted = 0
        try:
            self._db = sqlite3.connect(
                str(path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise LimiterUnavailable(f"cannot open the rate-limit file {path}: {exc}") from exc

    def micros(self) -> int:
        """The clock in integer microseconds."""
        return int(self._clock() * MICROS)

    def bind(self, namespace: str, rates: Sequence[Rate]) -> _SQLiteBound:
        """The group ``rates`` under ``namespace``."""
        if not rates:
            raise ValueError("a limit group needs at least one rate")
        return _SQLiteBound(self, namespace, tuple(rates))

    def decide_one(self, key: str, rate: Rate) -> Refusal | None:
        """One rate, one statement."""
        now = self.micros()
        params = {"key": key, "now": now, "interval": rate.interval, "tolerance": rate.tolerance}
        try:
            if self._db.execute(_DECIDE, params).fetchall():
                self._counted(now)
                return None
            rows = self._db.execute("SELECT tat FROM ratelimit WHERE key = ?", (key,)).fetchall()
        except sqlite3.Error as exc:
            raise LimiterUnavailable(f"rate-limit file: {exc}") from exc
        wait = conforms(int(rows[0][0]), now, rate) if rows else 0
        return Refusal(0, max(1, wait))

    def decide_group(self, keys: list[str], rates: tuple[Rate, ...]) -> Refusal | None:
        """Several rates, all or nothing, in one immediate transaction."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                now = self.micros()
                rows = [
                    db.execute("SELECT tat FROM ratelimit WHERE key = ?", (key,)).fetchone() for key in keys
                ]
                refusal, tats = decide_all([int(row[0]) if row else 0 for row in rows], now, rates)
                if refusal is None:
                    db.executemany(
                        "INSERT INTO ratelimit (key, tat) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                        list(zip(keys, tats, strict=True)),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise LimiterUnavailable(f"rate-limit file: {exc}") from exc
        if refusal is None:
            self._counted(now)
        return refusal

    def _counted(self, now: int) -> None:
        self.admitted += 1
        if self.admitted % _SWEEP_EVERY == 0:
            self._db.execute("DELETE FROM ratelimit WHERE tat <= ?", (now,))

    async def close(self) -> None:
        """Close the file."""
        self._db.close()


class _SQLiteBound:
    __slots__ = ("_labels", "_limiter", "_namespace", "_rates")

    def __init__(self, limiter: SQLiteLimiter, namespace: str, rates: tuple[Rate, ...]) -> None:
        self._limiter = limiter
        self._namespace = namespace
        self._rates = rates
        self._labels = [f"|{rate.label}" for rate in rates]

    def decide(self, value: str) -> Refusal | None:
        """Count ``value``'s request, or refuse it; synchronous.

        Raises:
            LimiterUnavailable: the file stayed locked, or cannot be written.
        """
        base = f"{self._namespace}\0{value}"
        if len(self._rates) == 1:
            return self._limiter.decide_one(base + self._labels[0], self._rates[0])
        return self._limiter.decide_group([base + label for label in self._labels], self._rates)
