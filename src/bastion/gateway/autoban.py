"""Automatic bans: count each client address's failures in the fast-state store, ban at the
threshold, and refuse banned addresses before anything else.

:class:`BanGuard` is what the gateway's handler and engine call:

* :meth:`BanGuard.refuses` — first thing for every request, synchronous, against the local
  :class:`~bastion.gateway.bans.BanSet` (the handler answers 403 problem+json);
* :meth:`BanGuard.count` — for a reply that is a failure of a counted kind (:func:`kind_of`): an
  atomic ``incr`` of ``bans:{NETWORK}:KIND`` with the kind's window as TTL, shared by every
  process on the store. The handler awaits it before sending the reply, so a client that has
  its N-th failure answered is banned on this process already; the process whose ``incr``
  returns exactly the threshold (one process, whatever the concurrency: ``incr`` gives each
  caller a different value) issues the ban;
* :attr:`BanGuard.watch` — when set (alert rules), told of each counted failure after the ban
  count, awaited like it;
* :meth:`BanGuard.engine_rejected` — requests the HTTP front refused as malformed (400), counted
  in the background by socket peer (the front knows nothing else).

The counted address is the client address resolved through ``trusted_proxies``: the socket
peer unless the peer is a trusted proxy, so a rotating ``X-Forwarded-For`` from anyone else
never changes it. IPv6 clients count and are banned by ``/64``. Trusted proxies and
``gateway.bans.exempt`` are never counted nor banned.

Escalation: each automatic ban of a network increments ``bans:{NETWORK}:repeat`` (remembered
``repeat_window`` after the last ban); the n-th ban lasts ``duration × factor^(n−1)``, at most
``max_duration``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Iterator
from typing import Any
from typing import Final
from typing import Protocol

from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.registry import CollectorRegistry

from bastion.gateway.bans import BanBook
from bastion.gateway.bans import BanSet
from bastion.gateway.bans import ban_network
from bastion.gateway.bans import count_key
from bastion.gateway.bans import repeat_key
from bastion.gateway.contract import Reply
from bastion.gateway.policies import problem
from bastion.gateway.settings import BanRuleSettings
from bastion.gateway.settings import BansSettings
from bastion.gateway.settings import Networks
from bastion.net import NetworkSet
from bastion.net import address_key
from bastion.storage.ban_protocols import Ban
from bastion.storage.protocols import FastState

__all__ = ["BanGuard", "BanMetrics", "FailureWatch", "kind_of"]

log = logging.getLogger("bastion.gateway.bans")

#: Auth failures that do not count: a request without credentials (a first request, before a
#: token is fetched) and a valid token lacking a scope.
_UNCOUNTED_AUTH: Final = frozenset({"missing", "insufficient_scope"})
_LABELS: Final = {
    "auth": "authentication failures",
    "rate_limit": "rate-limit refusals",
    "refused": "refused requests",
}


class FailureWatch(Protocol):
    """Something else that counts failures by address (alert rules, :mod:`bastion.ops.alerting`)."""

    def watches(self, feed: str) -> bool:
        """Whether failures of kind ``feed`` are counted."""

    async def failure(self, network: str, feed: str) -> None:
        """Count one failure of ``network`` (never raises)."""


def kind_of(status: int, auth_failure: str | None, *, refused: bool = False) -> str | None:
    """Which counted kind a reply is (``auth``, ``rate_limit``, ``refused``), or ``None``.

    * ``rate_limit``: 429;
    * ``auth``: 401 for a refused, malformed or misplaced token, and 400 for two credentials
      (``auth_failure`` set by the bearer policies, other than ``missing``);
    * ``refused``: a request target refused before routing or as route confusion (400).
    """
    if status == 429:
        return "rate_limit"
    if auth_failure is not None and status in (400, 401) and auth_failure not in _UNCOUNTED_AUTH:
        return "auth"
    if refused and status == 400:
        return "refused"
    return None


class BanMetrics(Collector):
    """The ban counters of one process, exported on scrape.

    * ``bastion_gateway_banned_requests_total`` — requests refused because of a ban;
    * ``bastion_gateway_bans_issued_total{kind}`` — automatic bans this process issued;
    * ``bastion_gateway_bans_active`` — bans this process enforces now;
    * ``bastion_gateway_ban_errors_total{stage}`` — fast or durable store failures while counting
      (``count``) or recording a ban (``record``): the failure is not counted, or the ban stays
      local to this process.
    """

    def __init__(self, bans: BanSet, registry: CollectorRegistry | None = None) -> None:
        """Count for ``bans``; register on ``registry`` when given."""
        self._bans = bans
        self.banned = 0
        self.issued: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterator[Any]:
        """Nothing up front (families are built on scrape)."""
        return iter(())

    def collect(self) -> Iterator[Any]:
        """The metric families."""
        yield CounterMetricFamily(
            "bastion_gateway_banned_requests",
            "Requests refused because their address is banned.",
            value=self.banned,
        )
        issued = CounterMetricFamily(
            "bastion_gateway_bans_issued", "Automatic bans issued by this process.", labels=["kind"]
        )
        for kind, count in list(self.issued.items()):
            issued.add_metric([kind], count)
        yield issued
        yield GaugeMetricFamily(
            "bastion_gateway_bans_active", "Bans this process enforces.", value=len(self._bans.active())
        )
        errors = CounterMetricFamily(
            "bastion_gateway_ban_errors", "Store failures while counting or recording bans.", labels=["stage"]
        )
        for stage, count in list(self.errors.items()):
            errors.add_metric([stage], count)
        yield errors


class BanGuard:
    """Detection and enforcement of bans for one gateway process (see the module docstring)."""

    def __init__(
        self,
        settings: BansSettings,
        trusted_proxies: Networks,
        *,
        bans: BanSet,
        state: FastState,
        book: BanBook | None,
        metrics: BanMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Args:
        settings: ``[gateway.bans]``.
        trusted_proxies: ``gateway.trusted_proxies`` (never counted nor banned).
        bans: The local set, fed by a :class:`~bastion.gateway.bans.BanFeed`.
        state: The fast-state store the counts live in.
        book: Records the bans issued here (durable, fast key, channel, audit); ``None``
            keeps them local (tests).
        metrics: Counters; a private set when ``None``.
        clock: POSIX seconds.
        """
        self.bans = bans
        self._state = state
        self._book = book
        self.metrics = metrics if metrics is not None else BanMetrics(bans)
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        #: Also told of every counted failure (alert rules); set by the composition root.
        self.watch: FailureWatch | None = None
        self.configure(settings, trusted_proxies)

    def configure(self, settings: BansSettings, trusted_proxies: Networks) -> None:
        """Take new ``[gateway.bans]`` settings (a reload); counts and bans are kept."""
        self.settings = settings
        self._rules: dict[str, BanRuleSettings] = {
            "auth": settings.auth,
            "rate_limit": settings.rate_limit,
            "refused": settings.refused,
        }
        self._exempt = NetworkSet((*settings.exempt, *trusted_proxies))
        self._proxies = NetworkSet(trusted_proxies)

    # -- enforcement ------------------------------------------------------------------------------

    def refuses(self, client_ip: str) -> bool:
        """Whether ``client_ip`` is banned (synchronous; free while no ban exists)."""
        bans = self.bans
        if not bans or not self.settings.enabled:
            return False
        if bans.banned(client_ip):
            self.metrics.banned += 1
            return True
        return False

    @staticmethod
    def reply() -> Reply:
        """The answer to a banned client: 403 problem+json, without saying for how long."""
        return problem(403, "Forbidden", "Requests from this address are refused for a while")

    # -- detection --------------------------------------------------------------------------------

    def exempt(self, client_ip: str) -> bool:
        """Whether ``client_ip`` is never counted nor banned (a trusted proxy, ``exempt``, or
        not an address)."""
        key = address_key(client_ip)
        return key is None or self._exempt.contains(key)

    def count(self, client_ip: str, kind: str) -> Coroutine[Any, Any, None] | None:
        """Count one ``kind`` failure from ``client_ip``; ``None`` when nothing is to be counted.

        The awaitable never raises: a store failure is logged and counted
        (``bastion_gateway_ban_errors_total{stage="count"}``) and the failure goes uncounted.
        """
        if not self.settings.enabled:
            return None
        rule = self._rules.get(kind)
        if rule is not None and rule.threshold == 0:
            rule = None
        watch = self.watch if self.watch is not None and self.watch.watches(kind) else None
        if (rule is None and watch is None) or self.exempt(client_ip):
            return None
        network = ban_network(client_ip)
        if network is None:
            return None
        if watch is None:
            assert rule is not None
            return self._count(network, kind, rule)
        return self._count_watched(network, kind, rule, watch)

    async def _count_watched(
        self, network: str, kind: str, rule: BanRuleSettings | None, watch: FailureWatch
    ) -> None:
        if rule is not None:
            await self._count(network, kind, rule)
        await watch.failure(network, kind)

    def engine_rejected(self, peer: str, status: int) -> None:
        """The HTTP front refused a request from ``peer`` as malformed: counted as ``refused``
        in the background (a 400 only; a trusted proxy's request is never counted, since the
        front cannot tell whose it was)."""
        if status != 400:
            return
        pending = self.count(peer, "refused")
        if pending is None:
            return
        task = asyncio.get_running_loop().create_task(pending)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for background counts (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Finish background counts."""
        await self.settle()

    async def _count(self, network: str, kind: str, rule: BanRuleSettings) -> None:
        try:
            count = await self._state.incr(count_key(network, kind), rule.window)
        except Exception as exc:  # the store is down: the reply goes out uncounted
            self.metrics.errors["count"] = self.metrics.errors.get("count", 0) + 1
            log.warning("bans: cannot count a %s failure of %s: %s", kind, network, exc)
            return
        if count != rule.threshold:
            # Below: not yet. Above: banned already — failures in flight when the ban came (or on
            # other processes before it reached them) go on counting past the threshold and
            # never earn a second ban; the count ends with its window, which no ban is shorter
            # than, so an address whose ban ended starts a fresh count.
            return
        await self._ban(network, kind, rule, count)

    async def _ban(self, network: str, kind: str, rule: BanRuleSettings, count: int) -> None:
        now = self._clock()
        reason = f"{count} {_LABELS[kind]} in {rule.window:g} s"
        # Enforced here at once, before any further round trip; escalated below.
        provisional = Ban(network, reason, "auto", now, now + rule.duration, 1, kind)
        self.bans.apply(provisional)
        self.metrics.issued[kind] = self.metrics.issued.get(kind, 0) + 1
        ban = provisional
        try:
            key = repeat_key(network)
            repeat = await self._state.incr(key, self.settings.repeat_window)
            # Remembered for repeat_window after the *last* ban, not the first.
            await self._state.set(key, str(repeat).encode("ascii"), self.settings.repeat_window)
            ban = Ban(network, reason, "auto", now, now + rule.ban_seconds(repeat), repeat, kind)
            self.bans.apply(ban)
            if self._book is not None:
                await self._book.ban(ban)
        except Exception as exc:
            self.metrics.errors["record"] = self.metrics.errors.get("record", 0) + 1
            log.error("bans: %s is banned in this process only, recording failed: %s", network, exc)
            return
        log.warning("bans: banned %s until %s (%s, ban #%d)", network, _when(ban.until), reason, ban.repeat)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
