"""``PollingRevocations``: revocations polled from the authorization server's revocation list.

For services that share no store with the authorization server (another machine, no Redis):
the revocation list (Bastion's ``POST /revocations``, advertised as ``revocation_list_endpoint``
in its RFC 8414 metadata) is client-authenticated like introspection (RFC 7662 §2.1) and
answers ``{"jtis": [[jti, until], ...], "clients": [[client_id, before, until], ...],
"cursor": ...}``; sending the cursor back returns only what changed.

Invariants:

* Every poll's entries are pushed into the followed validators (``revoke``,
  ``revoke_client``), which drop the tokens from their caches, and kept here, where
  :meth:`PollingRevocations.is_revoked` answers from memory (no request per token).
* The first poll, and the first after any failure, carries no cursor: the full list (catch-up).
* While polls fail, validators do not trust their caches (every hit is re-checked here), and
  once the last successful poll is older than ``max_stale`` this source refuses to answer
  (``IssuerUnavailable``, 503): fail closed. A revocation is seen within ``interval`` plus one
  request while the list can be reached, and no token is accepted on knowledge older than
  ``max_stale`` when it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any
from typing import Final

import aiohttp

from bastion.tokens._errors import IssuerUnavailable
from bastion.tokens._http import DEFAULT_TIMEOUT
from bastion.tokens._http import Http
from bastion.tokens._http import discover
from bastion.tokens._introspection import _basic_auth
from bastion.tokens._lifecycle import AsyncResource
from bastion.tokens._revocation import RevocationList
from bastion.tokens._revocation import _Revocable

DEFAULT_POLL_INTERVAL: Final = 5.0
#: A full list of a busy issuer (every token revoked in the last 20 minutes) can be large.
DEFAULT_MAX_LIST_BYTES: Final = 16 * 1024 * 1024
_FORM: Final = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
_Page = tuple[list[tuple[str, float]], list[tuple[str, float, float]], str]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_page(document: Any) -> _Page:
    """Check one answer of the revocation list.

    Raises:
        IssuerUnavailable: it is not one (the poll counts as failed: nothing of it is applied).
    """
    if not isinstance(document, dict):
        raise IssuerUnavailable("revocation list: the answer is not a JSON object")
    jtis, clients, cursor = document.get("jtis"), document.get("clients"), document.get("cursor")
    if not isinstance(jtis, list) or not isinstance(clients, list) or not isinstance(cursor, str):
        raise IssuerUnavailable("revocation list: jtis, clients or cursor missing")
    revoked: list[tuple[str, float]] = []
    for entry in jtis:
        if not (
            isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and _number(entry[1])
        ):
            raise IssuerUnavailable("revocation list: a jtis entry is not [jti, until]")
        revoked.append((entry[0], float(entry[1])))
    disabled: list[tuple[str, float, float]] = []
    for entry in clients:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and _number(entry[1])
            and _number(entry[2])
        ):
            raise IssuerUnavailable("revocation list: a clients entry is not [client_id, before, until]")
        disabled.append((entry[0], float(entry[1]), float(entry[2])))
    return revoked, disabled, cursor


class PollingRevocations(AsyncResource):
    """A ready :class:`RevocationSource` that polls the authorization server's revocation list.

    Use it where a service shares no store with the authorization server; where it can read
    the fast-state store, :class:`FastStateRevocations` hears of a revocation at once instead
    of within ``interval``. The client needs the scope ``bastion:revocations``::

        async with (
            PollingRevocations(issuer, client_id=cid, client_secret=secret) as revocations,
            TokenValidator(issuer, audience=aud, revocation=revocations) as validator,
        ):
            follower = asyncio.create_task(revocations.follow([validator]))

    :meth:`follow` polls every ``interval`` seconds and pushes each revocation (and each
    disabled client) into the validators. When a poll fails it sets their ``cache_trusted`` to
    ``False``, retries with capped exponential backoff, and after ``max_stale`` seconds without
    a successful poll :meth:`is_revoked` raises ``IssuerUnavailable`` (the validation fails
    closed with 503); the first poll that succeeds again reads the full list and trusts the
    caches again. :meth:`close` stops following and closes the HTTP session it owns.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        issuer: str | None = None,
        *,
        client_id: str,
        client_secret: str,
        endpoint: str | None = None,
        interval: float = DEFAULT_POLL_INTERVAL,
        max_stale: float | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        backoff: float = 0.1,
        backoff_cap: float = 30.0,
        max_bytes: int = DEFAULT_MAX_LIST_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Args:
        issuer: The issuer identifier; the endpoint is read from its RFC 8414 metadata
            (``revocation_list_endpoint``) unless ``endpoint`` is given.
        client_id: This service's client id at the issuer (registered with the scope
            ``bastion:revocations``).
        client_secret: Its secret (sent with ``client_secret_basic``).
        endpoint: The revocation list's URL (``{issuer}/revocations`` at Bastion).
        interval: Seconds between two polls: the delay before a revocation is seen here.
        max_stale: Answer from what was polled for at most this long after the last successful
            poll, then refuse (fail closed). Default: three intervals plus the request timeout.
        session: aiohttp session to borrow; by default one is owned (and closed by
            :meth:`close`).
        timeout: Timeouts of each poll.
        backoff: First retry delay after a failed poll; doubles per failure.
        backoff_cap: Longest retry delay (never more than ``interval`` is waited, though).
        max_bytes: Largest answer accepted.
        clock: Seconds since the epoch (when revocations may be forgotten); injectable.

        Raises:
            ValueError: neither ``issuer`` nor ``endpoint``, or a non-positive interval.
        """
        if issuer is None and endpoint is None:
            raise ValueError("give the issuer or the revocation list's endpoint")
        if interval <= 0 or backoff <= 0 or backoff_cap < backoff:
            raise ValueError("interval and backoff must be positive, backoff_cap at least backoff")
        self.issuer = issuer
        self._endpoint = endpoint
        self._auth = _basic_auth(client_id, client_secret)
        self._http = Http(session, timeout)
        self.interval = interval
        self.max_stale = max_stale if max_stale is not None else 3 * interval + (timeout.total or 5.0)
        self._backoff = backoff
        self._cap = backoff_cap
        self._max_bytes = max_bytes
        self._clock = clock
        self._revoked = RevocationList(max_entries=1_000_000)
        #: client_id -> (refuse its tokens issued before, until).
        self._clients: dict[str, tuple[float, float]] = {}
        self._last_success: float | None = None  # time.monotonic() of the last successful poll
        self._followers: set[asyncio.Task[Any]] = set()
        #: The last poll succeeded.
        self.healthy = False
        #: Polls that failed so far.
        self.drops = 0
        #: Why the last poll failed (``None`` after a success).
        self.last_error: str | None = None

    # -- RevocationSource ---------------------------------------------------------------------

    def _fresh(self) -> None:
        last = self._last_success
        if last is None:
            raise IssuerUnavailable("revocation list not polled yet", reason="revocation_unavailable")
        if time.monotonic() - last > self.max_stale:
            raise IssuerUnavailable(
                f"revocation list not polled for over {self.max_stale:g} s: {self.last_error}",
                reason="revocation_unavailable",
            )

    async def is_revoked(self, jti: str) -> bool:
        """Whether the list said ``jti`` was revoked.

        Raises:
            IssuerUnavailable: the list was not polled successfully within ``max_stale``.
        """
        self._fresh()
        return self._revoked.contains(jti, self._clock())

    async def client_disabled_before(self, client_id: str) -> float | None:
        """Tokens of ``client_id`` issued before this were refused (the client was disabled).

        Raises:
            IssuerUnavailable: the list was not polled successfully within ``max_stale``.
        """
        self._fresh()
        cutoff = self._clients.get(client_id)
        if cutoff is None or cutoff[1] <= self._clock():
            return None
        return cutoff[0]

    # -- polling ------------------------------------------------------------------------------

    async def _list_endpoint(self) -> str:
        if self._endpoint is None:
            if self.issuer is None:  # unreachable: __init__ requires one of the two
                raise IssuerUnavailable("no issuer and no revocation list endpoint")
            metadata = await discover(self._http, self.issuer)
            endpoint = metadata.get("revocation_list_endpoint")
            if not isinstance(endpoint, str):
                raise IssuerUnavailable(f"metadata of {self.issuer} has no revocation_list_endpoint")
            self._endpoint = endpoint
        return self._endpoint

    async def poll(self, cursor: str | None = None, validators: Iterable[_Revocable] = ()) -> str:
        """Poll once (the full list without ``cursor``), apply the answer here and to
        ``validators``, and return the next cursor.

        Raises:
            IssuerUnavailable: the list could not be read; nothing was applied.
        """
        form = {} if cursor is None else {"cursor": cursor}
        document = await self._http.request_json(
            "POST",
            await self._list_endpoint(),
            data=form,
            headers={**_FORM, "Authorization": self._auth},
            limit=self._max_bytes,
        )
        jtis, clients, next_cursor = parse_page(document)
        now = self._clock()
        targets = list(validators)
        for jti, until in jtis:
            self._revoked.add(jti, until, now)
            for validator in targets:
                validator.revoke(jti, until)
        for client_id, before, until in clients:
            old = self._clients.get(client_id)
            if old is not None:
                before, until = max(before, old[0]), max(until, old[1])
            self._clients[client_id] = (before, until)
            for validator in targets:
                validator.revoke_client(client_id, before, until)
        for client_id in [c for c, (_, until) in self._clients.items() if until <= now]:
            del self._clients[client_id]
        self._last_success = time.monotonic()
        self.last_error = None
        return next_cursor

    async def follow(self, validators: Iterable[_Revocable]) -> None:
        """Poll every ``interval`` and push revocations into ``validators`` until cancelled (or
        :meth:`close`), surviving any failure of the authorization server."""
        targets = list(validators)
        task = asyncio.current_task()
        if task is not None:
            self._followers.add(task)
        try:
            cursor: str | None = None
            failures = 0
            while True:
                try:
                    cursor = await self.poll(cursor, targets)
                except IssuerUnavailable as exc:
                    cursor = None  # the next poll that succeeds reads the full list
                    self._down(targets, exc.detail)
                    delay = min(self._cap, self.interval, self._backoff * 2**failures)
                    failures = min(failures + 1, 32)
                    # Jitter on the upper half: services dropped together do not retry together.
                    await asyncio.sleep(delay * (0.5 + random.random() / 2))
                    continue
                failures = 0
                if not self.healthy:
                    self.healthy = True
                    for validator in targets:
                        validator.cache_trusted = True
                await asyncio.sleep(self.interval)
        finally:
            if task is not None:
                self._followers.discard(task)

    def _down(self, targets: list[_Revocable], reason: str) -> None:
        self.drops += 1
        self.healthy = False
        self.last_error = reason
        for validator in targets:
            validator.cache_trusted = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the full list now, so that tokens can be checked before :meth:`follow` ran.

        Raises:
            IssuerUnavailable: the list could not be read.
        """
        await self.poll()

    async def close(self) -> None:
        """Stop every :meth:`follow` of this source and close the session it owns."""
        current = asyncio.current_task()
        followers = [task for task in self._followers if task is not current]
        for task in followers:
            task.cancel()
        for task in followers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._http.close()
