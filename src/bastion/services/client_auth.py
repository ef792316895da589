"""Limits at the authorization server's own doors: failed client authentication, counted before
the secret is checked, and each authenticated client's request rate.

RFC 6749 §10.10: "The authorization server MUST prevent attackers from guessing access tokens,
authorization codes, refresh tokens, resource owner passwords, and client credentials."

**Failures** (:class:`ClientAuthThrottle`) are counted in the fast-state store, so a limit holds
for every worker and every process sharing it (a SQLite file on one machine, Redis across
machines). An attempt passes three gates in turn; each keeps two counters whose window starts at
their first count:

=====================  ===========================================  ======================
gate                   counters (``…`` and ``…:failed``)            limit per window
=====================  ===========================================  ======================
``client_address``     ``clientauth:pair:<address> <client id>``    ``per_client_address``
``address``            ``clientauth:addr:<address>``                ``per_address``
``client``             ``clientauth:client:<client id>``            ``per_client``
=====================  ===========================================  ======================

The first counter holds the failures *and the attempts in flight*. At each gate the attempt is
counted there first, with one atomic increment, and admitted only when the value the increment
returns is within the limit: of N concurrent attempts at most ``limit`` (less the failures
already counted) are admitted, whatever the number of processes. A read, then a check, then a
count would let every concurrent guess reach the secret before the first one is counted. An
admitted attempt that fails stays counted, and is counted in ``…:failed`` too; one that
succeeds takes its count back.

An attempt over a limit is refused (HTTP 429) and leaves no count anywhere: it never reaches a
secret, so it needs none, and one address guessing one client fills only that pair's gate (the
client keeps working from elsewhere, other clients from that address). ``…:failed`` tells why
it was refused. At the limit: locked until the window ends (``Retry-After`` says when). Below
it, the gate is full of attempts still in flight (a client's own concurrent requests): the
attempt waits for room (reading the count after 2 ms, 4, 8 … at most 50 ms apart, for up to a
second in all), counts itself again, and only when that second has passed is it refused with
``Retry-After: 1``.

**What a success gives back.** Exactly its own attempt, at every gate, never the failures before
it. Clearing the client's count on success, as the sign-in throttle clears an account's, would
let an attacker guessing a busy client's secret start afresh after each of the client's own
requests: with only the attempt given back, ``limit`` wrong secrets per window is all anyone
gets, however often the client itself succeeds. Nor does a success clear its address's count,
so a valid client cannot wipe the count of an attacker behind the same address.

**The bound.** Per gate and window, at most ``limit`` wrong secrets are checked. One thing
loosens it: a success whose window ends between its count and its give-back leaves the next
window one below zero (one more attempt in that window, once per such success).

**Request rate** (:class:`ClientRequestLimit`): the authenticated client's requests at
introspection and revocation, decided with GCRA (:mod:`bastion.ratelimit`) after the client
has authenticated, so that nobody can spend another client's rate.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass

from bastion.net import address_bucket
from bastion.ops.audit import AuditLog
from bastion.ops.sampling import OncePer
from bastion.protocol.errors import SlowDown
from bastion.protocol.models import Client
from bastion.ratelimit import BoundLimit
from bastion.ratelimit import LimiterUnavailable
from bastion.ratelimit import Refusal
from bastion.services.metrics import ServerMetrics
from bastion.storage.protocols import FastState
from bastion.storage.protocols import StorageError

#: What a refused client is told (RFC 6749 §5.2 allows any ASCII description).
TOO_MANY_FAILURES = "Too many failed client authentications. Try again later."
TOO_MANY_REQUESTS = "Too many requests from this client. Try again later."


@dataclass(frozen=True, slots=True)
class ClientAuthPolicy:
    """Limits on failed client authentication (counts per ``window`` seconds)."""

    window: float = 900.0
    per_client_address: int = 50
    per_address: int = 250
    per_client: int = 500
    #: A gate full of attempts in flight (not of failures): seconds an attempt waits for room,
    #: in all, and its first and longest pause between looks (doubling from one to the other).
    busy_patience: float = 1.0
    busy_wait: float = 0.002
    busy_wait_max: float = 0.05


def _client_part(client_id: str) -> str:
    """The client id as it appears in a counter's key: as it is when it could name a client
    (RFC 6749 Appendix A.1: 1-255 printable ASCII), else a digest (any other string names no
    client, and may be long or hold any character)."""
    if 0 < len(client_id) <= 255 and client_id.isascii() and client_id.isprintable():
        return client_id
    return "#" + hashlib.blake2b(client_id.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class Attempt:
    """An attempt counted at ``gates`` (``(gate, key, limit)``, all three once admitted)."""

    gates: tuple[tuple[str, str, int], ...]
    client_id: str
    ip: str


class _Refused(Exception):
    """Over the limit of gate ``key``: ``locked`` (by failures) or full of attempts in flight."""

    def __init__(self, gate: str, key: str, limit: int, *, locked: bool, retry_after: int) -> None:
        self.gate = gate
        self.key = key
        self.limit = limit
        self.locked = locked
        self.retry_after = retry_after


class _Throttled(Exception):
    """An attempt refused at ``gate`` (rendered as :class:`SlowDown`)."""

    def __init__(self, gate: str, retry_after: int) -> None:
        self.gate = gate
        self.retry_after = retry_after


class ClientAuthThrottle:
    """Counts client-authentication attempts in fast state and refuses those over a limit."""

    def __init__(
        self,
        state: FastState,
        policy: ClientAuthPolicy,
        *,
        audit: AuditLog | None = None,
        metrics: ServerMetrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._state = state
        self.policy = policy
        self._audit = audit
        self._metrics = metrics
        self._sleep = sleep

    def gates(self, client_id: str, ip: str) -> tuple[tuple[str, str, int], ...]:
        """``(gate, counter key, limit)`` in the order an attempt meets them."""
        policy = self.policy
        client = _client_part(client_id)
        address = address_bucket(ip)
        return (
            ("client_address", f"clientauth:pair:{address} {client}", policy.per_client_address),
            ("address", f"clientauth:addr:{address}", policy.per_address),
            ("client", f"clientauth:client:{client}", policy.per_client),
        )

    async def attempt(self, client_id: str, ip: str) -> Attempt:
        """Count an attempt of ``client_id`` from ``ip`` at each gate in turn; admitted when every
        count, this attempt included, is within its limit.

        Raises:
            SlowDown: over a limit (HTTP 429), nothing counted. ``retry_after`` is the rest of
                the window when the gate holds ``limit`` failures, else 1 (attempts in flight
                filled it, and the attempt waited for them in vain).
            StorageError: the fast-state store failed (the caller answers 503).
        """
        try:
            return await self._attempt(client_id, ip)
        except _Throttled as exc:
            if self._metrics is not None:
                self._metrics.throttle("client_auth", exc.gate)
            raise SlowDown(TOO_MANY_FAILURES, retry_after=exc.retry_after) from None

    async def _attempt(self, client_id: str, ip: str) -> Attempt:
        policy = self.policy
        waited, wait = 0.0, policy.busy_wait
        while True:
            try:
                return await self._pass_gates(client_id, ip)
            except _Refused as exc:
                refused = exc
            if refused.locked:
                raise _Throttled(refused.gate, refused.retry_after)
            # Busy: look (a read, no count) until the gate has room, then count again.
            while True:
                if waited >= policy.busy_patience:
                    raise _Throttled(refused.gate, refused.retry_after)
                await self._sleep(wait)
                waited += wait
                wait = min(wait * 2, policy.busy_wait_max)
                count = await self._state.get(refused.key)
                if count is None or int(count) < refused.limit:
                    break
                failed = await self._state.get(refused.key + ":failed")
                if failed is not None and int(failed) >= refused.limit:  # locked meanwhile
                    remaining = await self._state.ttl(refused.key) or policy.window
                    raise _Throttled(refused.gate, max(1, math.ceil(remaining)))

    async def _pass_gates(self, client_id: str, ip: str) -> Attempt:
        state = self._state
        window = self.policy.window
        gates = self.gates(client_id, ip)
        for index, (gate, key, limit) in enumerate(gates):
            count = await state.incr(key, window)
            if count <= limit:
                continue
            await self.give_back(Attempt(gates[: index + 1], client_id, ip))
            failed = await state.get(key + ":failed")
            if failed is None or int(failed) < limit:
                raise _Refused(gate, key, limit, locked=False, retry_after=1)
            remaining = await state.ttl(key) or window
            raise _Refused(gate, key, limit, locked=True, retry_after=max(1, math.ceil(remaining)))
        return Attempt(gates, client_id, ip)

    async def failed(self, attempt: Attempt) -> None:
        """Record that ``attempt`` was checked and failed: its counts stay, and each gate's
        ``…:failed`` counter (what tells a locked gate from a busy one) goes up. The failure
        that locks a gate is audited as ``client.auth_throttled`` (once per gate and window,
        however long a flood goes on)."""
        window = self.policy.window
        counts = await asyncio.gather(
            *(self._state.incr(key + ":failed", window) for _, key, _ in attempt.gates)
        )
        for (gate, _, limit), count in zip(attempt.gates, counts, strict=True):
            if count == limit and self._audit is not None:
                self._audit.emit(
                    "client.auth_throttled",
                    outcome="denied",
                    subject=_client_part(attempt.client_id),
                    client=_client_part(attempt.client_id),
                    address=attempt.ip,
                    reason=f"{limit}_failures_per_{gate}",
                    details={"gate": gate, "window": self.policy.window},
                )

    async def give_back(self, attempt: Attempt) -> None:
        """Take ``attempt`` off every counter it was counted at (a success, a refusal, or an
        attempt that never reached the secret check); the failures counted before it stay."""
        window = self.policy.window
        await asyncio.gather(*(self._state.incr(key, window, amount=-1) for _, key, _ in attempt.gates))


class ClientRequestLimit:
    """The request rate of each client, on a bound group of the rate-limit backend.

    A refusal is audited as ``client.rate_limited`` once per bucket and ``report_every``
    seconds in this process, however long a flood goes on.
    """

    def __init__(
        self,
        bound: BoundLimit,
        *,
        audit: AuditLog | None = None,
        metrics: ServerMetrics | None = None,
        report_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bound = bound
        self._audit = audit
        self._metrics = metrics
        self._reports = OncePer(report_every, clock=clock)

    async def admit(self, client: Client, ip: str) -> None:
        """Count one request of ``client`` or refuse it.

        A confidential client's bucket is its id. A public client is only identified, not
        authenticated (RFC 6749 §2.1), so anyone could send its id: its bucket is its id and
        the address, and a stranger spends only its own.

        Raises:
            SlowDown: over the rate (HTTP 429), with the seconds until a request conforms.
            StorageError: the rate-limit backend cannot decide (the caller answers 503: a limit
                that cannot be checked is not waived).
        """
        value = f"{client.client_id} {address_bucket(ip)}" if client.public else client.client_id
        try:
            verdict = self._bound.decide(value)
            if verdict is not None and not isinstance(verdict, Refusal):
                verdict = await verdict
        except LimiterUnavailable as exc:
            raise StorageError(f"client rate limit: {exc}") from exc
        if verdict is not None:
            if self._metrics is not None:
                self._metrics.throttle("client_rate", "client")
            self._report(client, ip, value)
            raise SlowDown(TOO_MANY_REQUESTS, retry_after=verdict.retry_after)

    def _report(self, client: Client, ip: str, bucket: str) -> None:
        if self._audit is None:
            return
        if self._reports.due(bucket) is None:
            return
        self._audit.emit(
            "client.rate_limited",
            outcome="denied",
            subject=client.client_id,
            client=client.client_id,
            address=ip,
            reason="over_request_rate",
        )
