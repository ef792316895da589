"""Reporting a flood without flooding: at most one report per key per interval."""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Hashable


class OncePer:
    """Says yes to each key at most once every ``interval`` seconds, and counts the noes.

    For audit events about floods (a client over its rate, a gateway refusing an address):
    the first occurrence is reported, the rest of the interval is folded into the next report.
    Memory is bounded: when ``max_keys`` keys are remembered and a new one arrives, they are
    all forgotten (a sweep of spoofed addresses costs reports, never memory).
    """

    __slots__ = ("_clock", "_interval", "_max_keys", "_seen")

    def __init__(
        self, interval: float, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        #: key → [when it was last reported, occurrences folded since]
        self._seen: dict[Hashable, list[float]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def due(self, key: Hashable) -> int | None:
        """``None`` when ``key`` was reported less than ``interval`` ago (this occurrence is
        folded); otherwise how many occurrences were folded since its last report."""
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self._interval:
            seen[1] += 1
            return None
        if seen is None and len(self._seen) >= self._max_keys:
            self._seen.clear()
        self._seen[key] = [now, 0]
        return int(seen[1]) if seen is not None else 0
