"""Rate-limit buckets in this process: decided synchronously, with nothing allocated for an
admitted request but the bucket's own entry.

Right for one process (``memory://`` state) and as the reference the other backends are tested
against. Buckets whose ``tat`` has passed hold nothing a fresh bucket would not, so they are
swept every :data:`SWEEP_EVERY` decisions; the memory held is bounded by the buckets touched in
the last ``period`` (plus burst) of each rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Final

from bastion.ratelimit.gcra import MICROS
from bastion.ratelimit.gcra import Rate
from bastion.ratelimit.gcra import Refusal
from bastion.ratelimit.gcra import decide_all

__all__ = ["LocalLimiter"]

SWEEP_EVERY: Final = 65_536


class LocalLimiter:
    """:class:`~bastion.ratelimit.Limiter` on this process's memory (a monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Decide at ``clock()`` seconds (monotonic by default; tests inject one)."""
        self._clock = clock
        self._tables: dict[str, dict[str, int]] = {}
        #: Requests admitted (and counted) so far.
        self.admitted = 0

    def micros(self) -> int:
        """The clock in integer microseconds."""
        return int(self._clock() * MICROS)

    def table(self, namespace: str, rate: Rate) -> dict[str, int]:
        """The buckets (``value -> tat``) of ``rate`` under ``namespace``, created once."""
        name = f"{namespace}|{rate.label}"
        found = self._tables.get(name)
        if found is None:
            found = self._tables[name] = {}
        return found

    def bind(self, namespace: str, rates: Sequence[Rate]) -> _LocalBound:
        """The group ``rates`` under ``namespace``."""
        if not rates:
            raise ValueError("a limit group needs at least one rate")
        return _LocalBound(self, [self.table(namespace, rate) for rate in rates], tuple(rates))

    def counted(self) -> None:
        """One more decision stored; sweeps passed buckets now and then."""
        self.admitted += 1
        if self.admitted % SWEEP_EVERY == 0:
            self.sweep()

    def sweep(self) -> None:
        """Forget every bucket whose ``tat`` has passed (it is as good as a fresh one)."""
        now = self.micros()
        for table in self._tables.values():
            for value in [value for value, tat in table.items() if tat <= now]:
                del table[value]

    def __len__(self) -> int:
        """Buckets held, over every table."""
        return sum(len(table) for table in self._tables.values())

    async def close(self) -> None:
        """Drop every bucket."""
        self._tables.clear()


class _LocalBound:
    __slots__ = ("_interval", "_limiter", "_rate", "_rates", "_table", "_tables", "_tolerance")

    def __init__(self, limiter: LocalLimiter, tables: list[dict[str, int]], rates: tuple[Rate, ...]) -> None:
        self._limiter = limiter
        self._tables = tables
        self._rates = rates
        # The common case, one rate, decided inline below.
        self._table = tables[0] if len(tables) == 1 else None
        self._rate = rates[0]
        self._interval = rates[0].interval
        self._tolerance = rates[0].tolerance

    def decide(self, value: str) -> Refusal | None:
        """Count ``value``'s request, or refuse it; synchronous."""
        limiter = self._limiter
        now = limiter.micros()
        table = self._table
        if table is not None:
            tat = table.get(value, 0)
            if tat < now:
                tat = now
            early = tat - self._tolerance - now
            if early > 0:
                return Refusal(0, early)
            table[value] = tat + self._interval
            limiter.counted()
            return None
        tables = self._tables
        refusal, tats = decide_all([t.get(value, 0) for t in tables], now, self._rates)
        if refusal is not None:
            return refusal
        for t, tat in zip(tables, tats, strict=True):
            t[value] = tat
        limiter.counted()
        return None
