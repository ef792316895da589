"""The generic cell rate algorithm (GCRA), pure: no clock reads, no I/O.

GCRA is the "virtual scheduling" form of a token bucket (ITU-T I.371; the ATM Forum's UNI 3.1
§3.6.2.4.1): a bucket keeps one number, its *theoretical arrival time* ``tat``. A rate of
``requests`` per ``period`` spaces requests ``interval = period / requests`` apart and tolerates
``tolerance = (burst - 1) * interval`` of running ahead. A request at ``now``

* conforms when ``now >= tat - tolerance``; then ``tat = max(tat, now) + interval``;
* is refused otherwise, and may be retried ``tat - tolerance - now`` later; ``tat`` is unchanged.

The promise (tested with hypothesis): over any interval of length ``t``, at most
``burst + t / interval`` requests conform — ``burst`` at once after an idle period, then one per
``interval``. A client sending at the rate is never refused.

Times are integer microseconds, so every backend (Python, SQL, Redis's Lua with its double
precision numbers) computes exactly the same decisions. ``interval`` is rounded up: a rounding
error only ever admits less.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

__all__ = ["Rate", "Refusal", "conforms", "decide_all", "remaining", "seconds"]

MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """``requests`` per ``period`` seconds, at most ``burst`` at once (default: ``requests``)."""

    requests: int
    period: float
    burst: int = 0
    #: Microseconds between two requests at the steady rate (rounded up).
    interval: int = field(init=False)
    #: Microseconds a bucket may run ahead of the steady rate: ``(burst - 1) * interval``.
    tolerance: int = field(init=False)

    def __post_init__(self) -> None:
        """Derive ``interval`` and ``tolerance``.

        Raises:
            ValueError: a non-positive count, period or burst.
        """
        if self.requests < 1 or not self.period > 0 or self.burst < 0:
            raise ValueError("a rate needs requests >= 1, period > 0 and burst >= 0")
        if self.burst == 0:
            object.__setattr__(self, "burst", self.requests)
        interval = -(-round(self.period * MICROS) // self.requests)
        object.__setattr__(self, "interval", max(1, interval))
        object.__setattr__(self, "tolerance", (self.burst - 1) * self.interval)

    @property
    def label(self) -> str:
        """Identifies the rate within a namespace (bucket keys carry it, so a changed rate starts
        fresh buckets)."""
        return f"{self.requests}/{round(self.period * MICROS)}/{self.burst}"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused request: which rate of the group refused it, and when to retry."""

    #: Index of the rate (in the bound group) whose wait is the longest.
    index: int
    #: Microseconds until the request would conform.
    wait: int

    @property
    def retry_after(self) -> int:
        """Whole seconds until a retry conforms, rounded up, at least 1 (RFC 9110 §10.2.3's
        ``delay-seconds``)."""
        return max(1, seconds(self.wait))


def conforms(tat: int, now: int, rate: Rate) -> int:
    """Microseconds ``now`` is early for a bucket at ``tat``: ``0`` when a request conforms."""
    early = tat - rate.tolerance - now
    return early if early > 0 else 0


def decide_all(tats: Sequence[int], now: int, rates: Sequence[Rate]) -> tuple[Refusal | None, list[int]]:
    """Decide one request against every rate of a group, all or nothing.

    Args:
        tats: Each bucket's stored ``tat`` (``0`` for a bucket never seen, or expired).
        now: The decision time, in microseconds.
        rates: The group's rates, in the order of ``tats``.

    Returns:
        ``(None, new_tats)`` when every rate admits it (store ``new_tats``), or
        ``(refusal, [])`` naming the rate with the longest wait (store nothing).
    """
    refusal: Refusal | None = None
    for index, (tat, rate) in enumerate(zip(tats, rates, strict=True)):
        wait = conforms(tat, now, rate)
        if wait and (refusal is None or wait > refusal.wait):
            refusal = Refusal(index, wait)
    if refusal is not None:
        return refusal, []
    return None, [(tat if tat > now else now) + rate.interval for tat, rate in zip(tats, rates, strict=True)]


def remaining(tat: int, now: int, rate: Rate) -> int:
    """Requests that would conform right now, one after another, for a bucket at ``tat``."""
    ahead = now + rate.tolerance - (tat if tat > now else now)
    return ahead // rate.interval + 1 if ahead >= 0 else 0


def seconds(micros: int) -> int:
    """Microseconds as whole seconds, rounded up."""
    return math.ceil(micros / MICROS)
