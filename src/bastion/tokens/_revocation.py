"""Revoked token ids: a pluggable shared source, and the validator's own local list."""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol
from typing import runtime_checkable


@runtime_checkable
class RevocationSource(Protocol):
    """Tells whether a ``jti`` was revoked (a Redis feed, the authorization server's store …).

    Consulted on every cache miss, after the signature verified. Errors it raises make the
    validation fail closed (``IssuerUnavailable``).

    .. versionadded:: 0.1
    """

    async def is_revoked(self, jti: str) -> bool:
        """Whether the token with this id was revoked."""
        ...


class RevocationList:
    """``jti`` values revoked locally, each kept until its token would have expired anyway.

    Bounded: past ``max_entries``, entries that expired go first, then the ones expiring
    soonest are dropped (their tokens are the closest to dying on their own).
    """

    __slots__ = ("_until", "max_entries")

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._until: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def add(self, jti: str, until: float, now: float) -> None:
        """Record ``jti`` as revoked until ``until`` (seconds since the epoch)."""
        self._until[jti] = max(until, self._until.get(jti, until))
        if len(self._until) > self.max_entries:
            self.purge(now)
        while len(self._until) > self.max_entries:
            soonest = min(self._until, key=self._until.__getitem__)
            del self._until[soonest]

    def contains(self, jti: str, now: float) -> bool:
        """Whether ``jti`` is revoked at ``now``."""
        until = self._until.get(jti)
        return until is not None and now < until

    def purge(self, now: float) -> None:
        """Forget revocations of tokens that have expired."""
        for jti in [jti for jti, until in self._until.items() if until <= now]:
            del self._until[jti]
