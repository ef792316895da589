"""Revoked token ids: a pluggable shared source, and the validator's own local lists."""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import AsyncIterator
from collections.abc import Iterable
from typing import Protocol
from typing import runtime_checkable

import orjson

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


class SharedState(Protocol):
    """What :class:`FastStateRevocations` needs of a shared store: Bastion's fast-state stores
    (``bastion.storage.fast``: a SQLite file, Redis) all fit, and so does a thin Redis wrapper.

    .. versionadded:: 0.2
    """

    async def get(self, key: str) -> bytes | None:
        """The live value of ``key``, or ``None``."""
        ...

    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        """Messages published on ``channel`` from now on."""
        ...


class FastStateRevocations:
    """A ready :class:`RevocationSource` on the authorization server's shared fast-state store.

    :meth:`is_revoked` reads the mark the authorization server writes for every revoked
    ``jti``; :meth:`follow` listens to its revocation feed and pushes each revocation (and each
    disabled client) into validators at once, so their caches forget the token. While the feed
    is down, :meth:`follow` sets the validators' ``cache_trusted`` to ``False`` (every hit is
    re-checked here; a store that cannot answer refuses it with ``IssuerUnavailable``); after
    a reconnect it clears their caches, since announcements may have been missed, and trusts
    them again. It reconnects with capped exponential backoff::

        revocations = FastStateRevocations(SQLiteState("/var/lib/bastion/state.db"))
        async with TokenValidator(issuer, audience=aud, revocation=revocations) as validator:
            follower = asyncio.create_task(revocations.follow([validator]))

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        state: SharedState,
        *,
        key_prefix: str = "revoked:",
        channel: str = "revocations",
        backoff: float = 0.1,
        backoff_cap: float = 30.0,
    ) -> None:
        self._state = state
        self._prefix = key_prefix
        self._channel = channel
        self._backoff = backoff
        self._cap = backoff_cap
        self.healthy = False
        self.drops = 0

    async def is_revoked(self, jti: str) -> bool:
        """Whether the authorization server marked ``jti`` revoked."""
        return await self._state.get(self._prefix + jti) is not None

    async def follow(self, validators: Iterable[_Revocable]) -> None:
        """Push revocations into ``validators`` until cancelled, surviving store failures."""
        targets = list(validators)
        failures = 0
        while True:
            try:
                subscription = self._state.subscribe(self._channel)
                async for message in subscription:
                    if not self.healthy:
                        self._trust(targets, clear=True)
                        failures = 0
                    apply_revocation(message, targets)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: S110 - a lost subscription: retry below
                pass
            self.drops += 1
            self.healthy = False
            for validator in targets:
                validator.cache_trusted = False
            delay = min(self._cap, self._backoff * 2**failures)
            failures = min(failures + 1, 32)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    def _trust(self, targets: list[_Revocable], *, clear: bool) -> None:
        self.healthy = True
        for validator in targets:
            if clear:
                validator.clear_cache()
            validator.cache_trusted = True


class _Revocable(Protocol):
    cache_trusted: bool

    def revoke(self, jti: str, exp: float | None = None) -> None: ...

    def revoke_client(self, client_id: str, issued_before: float, until: float | None = None) -> None: ...

    def clear_cache(self) -> None: ...


def apply_revocation(message: bytes, validators: Iterable[_Revocable]) -> None:
    """Apply one message of the revocation feed (``{"jti", "exp"}`` or ``{"client_id",
    "before", "exp"}``) to ``validators``; anything else is ignored."""
    try:
        event = orjson.loads(message)
    except orjson.JSONDecodeError:
        return
    if not isinstance(event, dict):
        return
    if isinstance(event.get("jti"), str) and isinstance(event.get("exp"), int | float):
        for validator in validators:
            validator.revoke(event["jti"], float(event["exp"]))
    elif isinstance(event.get("client_id"), str) and isinstance(event.get("before"), int | float):
        until = event.get("exp")
        for validator in validators:
            validator.revoke_client(
                event["client_id"],
                float(event["before"]),
                float(until) if isinstance(until, int | float) else None,
            )
