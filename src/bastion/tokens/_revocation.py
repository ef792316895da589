"""Revoked token ids: a pluggable shared source, and the validator's own local lists."""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol
from typing import runtime_checkable

from bastion.tokens._principal import Principal
from bastion.tokens._principal import issued_before


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


@runtime_checkable
class ClientRevocationSource(Protocol):
    """A :class:`RevocationSource` that also knows disabled clients (optional).

    .. versionadded:: 0.2
    """

    async def is_revoked(self, jti: str) -> bool:
        """Whether the token with this id was revoked."""
        ...

    async def client_disabled_before(self, client_id: str) -> float | None:
        """Tokens of ``client_id`` issued before this time are refused; ``None``: none are."""
        ...


class ClientCutoffs:
    """Disabled clients: ``client_id`` → (tokens issued before this are refused, until when)."""

    __slots__ = ("_cutoffs",)

    def __init__(self) -> None:
        self._cutoffs: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._cutoffs)

    def add(self, client_id: str, before: float, until: float) -> None:
        """Refuse the client's tokens issued before ``before``, until ``until``."""
        old = self._cutoffs.get(client_id)
        if old is not None:
            before, until = max(before, old[0]), max(until, old[1])
        self._cutoffs[client_id] = (before, until)

    def refuses(self, principal: Principal, now: float) -> bool:
        """Whether ``principal``'s token belongs to a client disabled after it was issued."""
        if not self._cutoffs or principal.client_id is None:
            return False
        cutoff = self._cutoffs.get(principal.client_id)
        if cutoff is None:
            return False
        if cutoff[1] <= now:
            del self._cutoffs[principal.client_id]
            return False
        return issued_before(principal, cutoff[0])


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
