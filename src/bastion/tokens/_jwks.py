"""An issuer's JWKS over HTTP: cached, refreshed in the background, refetched on demand at a
bounded rate, and kept when the issuer goes away.

Invariants:

* At most one fetch is in flight; every caller that needs it awaits the same task.
* A fetch that a token asks for (unknown ``kid``) is *started* at most once per
  ``refetch_cooldown`` (successful or not): a flood of tokens with made-up ``kid`` values costs
  at most one JWKS request per cooldown.
* Keys are fresh for ``cache_ttl``, or less when the JWKS response's ``Cache-Control: max-age``
  says so; stale keys are refreshed in the background, at most once per freshness period (and
  never more than once a second), whatever the cooldown.
* Once keys were fetched, failures never take them away: stale keys keep verifying until the
  issuer answers again.
* The JWKS location comes from configuration or the issuer's metadata, never from a token.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Final

import aiohttp

from bastion.tokens._errors import IssuerUnavailable
from bastion.tokens._http import DEFAULT_TIMEOUT
from bastion.tokens._http import Http
from bastion.tokens._http import discover
from bastion.tokens._keys import KeySet

_MIN_REFRESH: Final = 1.0

DEFAULT_CACHE_TTL: Final = 600.0
DEFAULT_REFETCH_COOLDOWN: Final = 30.0


class JWKSKeySource:
    """The :class:`KeySource` that fetches ``jwks_uri`` with aiohttp.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        issuer: str,
        *,
        jwks_uri: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        refetch_cooldown: float = DEFAULT_REFETCH_COOLDOWN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Args:
        issuer: The trusted issuer identifier (used for metadata discovery only).
        jwks_uri: Explicit JWKS location; otherwise read from the issuer's metadata.
        session: A shared aiohttp session to borrow; by default one is owned.
        timeout: Timeouts for every request.
        cache_ttl: Age after which keys are refreshed in the background (default 10 min).
        refetch_cooldown: Minimum time between two fetch attempts (default 30 s).
        clock: Seconds since the epoch; injectable for tests.
        """
        if cache_ttl <= 0 or refetch_cooldown < 0:
            raise ValueError("cache_ttl must be positive and refetch_cooldown not negative")
        self.issuer = issuer
        self._jwks_uri = jwks_uri
        self._http = Http(session, timeout)
        self._ttl = cache_ttl
        self._cooldown = refetch_cooldown
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = -math.inf
        self._fresh_for = cache_ttl
        self._attempted_at = -math.inf
        self._inflight: asyncio.Task[KeySet] | None = None
        #: Fetch attempts started so far (for metrics and tests).
        self.fetches = 0

    async def get_keys(self, *, force: bool = False) -> KeySet:
        """The issuer's keys; see the module invariants for when this fetches.

        Raises:
            IssuerUnavailable: no keys were ever fetched and fetching fails now (or failed
                less than a cooldown ago).
        """
        keys = self._keys
        now = self._clock()
        may_start = now - self._attempted_at >= self._cooldown
        if keys is None:
            if self._inflight is None and not may_start:
                raise IssuerUnavailable(f"JWKS of {self.issuer} unavailable; retrying after cooldown")
            return await self._shared_fetch(now)
        if force:
            if self._inflight is not None or may_start:
                return await self._shared_fetch(now)
            return keys
        # A scheduled refresh is paced by the keys' freshness (at least a second apart), not by
        # the cooldown: that one limits fetches that *tokens* can trigger.
        if (
            now - self._fetched_at >= self._fresh_for
            and self._inflight is None
            and now - self._attempted_at >= min(self._cooldown, max(self._fresh_for, _MIN_REFRESH))
        ):
            self._start(now)  # stale: refresh in the background, answer with what we have
        return keys

    async def start(self) -> None:
        """Prefetch the keys.

        Raises:
            IssuerUnavailable: the issuer cannot be reached.
        """
        await self.get_keys()

    async def close(self) -> None:
        """Stop any fetch in flight and close an owned session."""
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._http.close()

    async def _shared_fetch(self, now: float) -> KeySet:
        task = self._inflight if self._inflight is not None else self._start(now)
        # shield: a cancelled caller must not cancel the fetch the others are waiting for.
        return await asyncio.shield(task)

    def _start(self, now: float) -> asyncio.Task[KeySet]:
        self._attempted_at = now
        self.fetches += 1
        task = asyncio.get_running_loop().create_task(self._fetch())
        self._inflight = task
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[KeySet]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: failures reach the awaiting callers, or nobody

    async def _fetch(self) -> KeySet:
        try:
            if self._jwks_uri is None:
                metadata = await discover(self._http, self.issuer)
                jwks_uri = metadata.get("jwks_uri")
                if not isinstance(jwks_uri, str):
                    raise IssuerUnavailable(f"metadata of {self.issuer} has no jwks_uri")
                self._jwks_uri = jwks_uri
            document, max_age = await self._http.request_json_cached("GET", self._jwks_uri)
            if not isinstance(document, dict):
                raise IssuerUnavailable("JWKS is not a JSON object")
            try:
                keys = KeySet.from_jwks(document)
            except ValueError as exc:
                raise IssuerUnavailable(f"JWKS of {self.issuer}: {exc}") from exc
        except IssuerUnavailable:
            if self._keys is not None:
                return self._keys  # keep verifying with what we had
            raise
        self._keys = keys
        self._fetched_at = self._clock()
        # The issuer's Cache-Control bounds how long its keys are fresh: an authorization server
        # publishes a new key for at least that long before it signs with it.
        self._fresh_for = self._ttl if max_age is None else min(self._ttl, max_age)
        return keys
