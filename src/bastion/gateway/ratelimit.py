"""The rate-limit policy: a route's limits, keyed per client, subject, address, route or header.

A route's limits (:class:`~bastion.gateway.settings.RateLimitSettings`; the gateway's default
when it names none) are grouped by key; each group is one :class:`RateLimitPolicy`, decided by
the :class:`~bastion.ratelimit.Limiter` backend in one atomic step (every limit of the group
admits the request, or none counts it). Groups keyed by address, route or header run before the
token is checked, so a flood costs no signature check; groups keyed by client or subject run
after the scopes.

A refused request gets 429 (RFC 6585 §4) with ``Retry-After`` (RFC 9110 §10.2.3) and the
fields of draft-ietf-httpapi-ratelimit-headers-12: ``RateLimit-Policy`` lists the group's
quota policies (§3: a List of Items, each a String naming the policy with ``q``, the quota, and
``w``, the window in seconds) and ``RateLimit`` the exhausted one (§4: ``r``, the remaining
quota, here 0, and ``t``, the seconds until it is available again)::

    RateLimit-Policy: "10-per-1s";q=10;w=1, "1000-per-3600s";q=1000;w=3600
    RateLimit: "10-per-1s";r=0;t=1

The bucket of a route-keyed limit is the route, found from the canonical path
(:mod:`~bastion.gateway.paths`), so ``/api/x``, ``/api/./x`` and ``/api/%78`` share it. An IPv6
client is bucketed by its /64 (one subscriber usually holds a whole /64, so single addresses
would be free buckets for it).

When the backend cannot decide, the route's ``on_error`` applies: ``closed`` (the default)
answers 503, ``open`` forwards; either way the fallback is logged and counted.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Awaitable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import Final

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from bastion.gateway.contract import Reply
from bastion.gateway.observe import GatewayMetrics
from bastion.gateway.policies import Exchange
from bastion.gateway.policies import Policy
from bastion.gateway.policies import PolicyContext
from bastion.gateway.policies import PolicyResult
from bastion.gateway.policies import problem
from bastion.gateway.settings import LimitSettings
from bastion.gateway.settings import RouteSettings
from bastion.net import address_key
from bastion.ratelimit import BoundLimit
from bastion.ratelimit import Limiter
from bastion.ratelimit import LimiterUnavailable
from bastion.ratelimit import Rate
from bastion.ratelimit import Refusal
from bastion.ratelimit.gcra import seconds

__all__ = [
    "RateLimitMetrics",
    "RateLimitPolicy",
    "after_auth",
    "before_auth",
    "ip_bucket",
    "policy_field",
]

_log = logging.getLogger("bastion.gateway.ratelimit")

#: Keys decided before the token is checked; the others need the principal.
_BEFORE_AUTH: Final = frozenset({"ip", "route", "header"})


class RateLimitMetrics(Collector):
    """``bastion_gateway_rate_limited_total{route}`` (429s),
    ``bastion_gateway_rate_limit_errors_total{route,on_error}`` (backend fallbacks) and
    ``bastion_gateway_rate_limit_admitted_total`` (requests the backend admitted and counted,
    read from it when scraped, so an admitted request costs no counting here)."""

    def __init__(self) -> None:
        """Empty counters; registered by :func:`rate_limit_metrics`."""
        self.refused: dict[str, int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        #: The backend whose ``admitted`` count is exported (set when a route binds a limit).
        self.limiter: Limiter | None = None

    def describe(self) -> Iterator[Any]:
        """Nothing up front."""
        return iter(())

    def collect(self) -> Iterator[Any]:
        """The two families."""
        refused = CounterMetricFamily(
            "bastion_gateway_rate_limited", "Requests refused by a rate limit (429).", labels=["route"]
        )
        for route, count in list(self.refused.items()):
            refused.add_metric([route], count)
        yield refused
        errors = CounterMetricFamily(
            "bastion_gateway_rate_limit_errors",
            "Rate-limit decisions the store could not make, by the fallback applied.",
            labels=["route", "on_error"],
        )
        for (route, mode), count in list(self.errors.items()):
            errors.add_metric([route, mode], count)
        yield errors
        admitted = CounterMetricFamily(
            "bastion_gateway_rate_limit_admitted",
            "Requests admitted and counted by the rate-limit store, over every route.",
        )
        admitted.add_metric([], self.limiter.admitted if self.limiter is not None else 0)
        yield admitted


_METRICS: weakref.WeakKeyDictionary[GatewayMetrics, RateLimitMetrics] = weakref.WeakKeyDictionary()


def rate_limit_metrics(metrics: GatewayMetrics) -> RateLimitMetrics:
    """The rate-limit counters of a gateway, registered on its registry once (reloads reuse
    them)."""
    found = _METRICS.get(metrics)
    if found is None:
        found = _METRICS[metrics] = RateLimitMetrics()
        metrics.registry.register(found)
    return found


@functools.lru_cache(maxsize=65_536)
def ip_bucket(client_ip: str) -> str:
    """The bucket of a client address: IPv4 as it is (IPv4-mapped IPv6 read as IPv4), IPv6 as
    its /64 prefix; an address that cannot be read shares the bucket ``"?"``."""
    key = address_key(client_ip)
    if key is None:
        return "?"
    version, value = key
    return f"4:{value:x}" if version == 4 else f"6:{value >> 64:x}/64"


def policy_field(limits: Sequence[LimitSettings]) -> bytes:
    """The ``RateLimit-Policy`` value for ``limits`` (draft-ietf-httpapi-ratelimit-headers-12
    §3): ``"name";q=requests;w=seconds``, comma-separated. The window is an Integer (whole
    seconds, rounded up: a client reading it waits at least as long as the limit says)."""
    items = [
        f'"{limit.policy_name}";q={limit.requests};w={seconds(round(limit.per * 1e6))}' for limit in limits
    ]
    return ", ".join(items).encode("ascii")


class RateLimitPolicy:
    """One group of a route's limits sharing a key; see the module docstring."""

    name = "rate_limit"

    __slots__ = ("_bound", "_header", "_key", "_limits", "_metrics", "_open", "_policy", "_route")

    def __init__(
        self,
        route: str,
        limits: Sequence[LimitSettings],
        bound: BoundLimit,
        *,
        on_error: str,
        metrics: RateLimitMetrics,
    ) -> None:
        """Decide ``limits`` (one key) through ``bound`` on route ``route``."""
        first = limits[0]
        self._route = route
        self._key = first.key
        self._header = first.header.lower().encode("ascii") if first.header is not None else b""
        self._limits = tuple(limits)
        self._bound = bound
        self._open = on_error == "open"
        self._metrics = metrics
        self._policy = policy_field(limits)

    def _value(self, exchange: Exchange) -> str:
        key = self._key
        if key == "ip":
            return ip_bucket(exchange.client_ip)
        if key == "route":
            return ""
        if key == "header":
            for name, value in exchange.head.headers:
                if name == self._header:
                    return value.decode("latin-1")
            return ""
        principal = exchange.principal
        if principal is None:  # settings refuse client/subject keys on auth = "none" routes
            return ""
        found = principal.client_id if key == "client" else principal.subject
        return found or ""

    def check(self, exchange: Exchange) -> PolicyResult | Awaitable[PolicyResult]:
        """``None`` when every limit of the group admits the request (it is counted), 429 when
        one does not."""
        try:
            verdict = self._bound.decide(self._value(exchange))
        except LimiterUnavailable as exc:
            return self._unavailable(exc)
        if verdict is None:
            return None
        if isinstance(verdict, Refusal):
            return self._refuse(verdict)
        return self._later(verdict)

    async def _later(self, pending: Awaitable[Refusal | None]) -> PolicyResult:
        try:
            verdict = await pending
        except LimiterUnavailable as exc:
            return self._unavailable(exc)
        return None if verdict is None else self._refuse(verdict)

    def _refuse(self, refusal: Refusal) -> Reply:
        refused = self._metrics.refused
        refused[self._route] = refused.get(self._route, 0) + 1
        limit = self._limits[refusal.index]
        retry = refusal.retry_after
        return problem(
            429,
            "Too Many Requests",
            "The rate limit of this route is exhausted; retry later",
            [
                (b"retry-after", str(retry).encode("ascii")),
                (b"ratelimit-policy", self._policy),
                (b"ratelimit", f'"{limit.policy_name}";r=0;t={retry}'.encode("ascii")),
            ],
        )

    def _unavailable(self, exc: LimiterUnavailable) -> Reply | None:
        mode = "open" if self._open else "closed"
        errors = self._metrics.errors
        errors[self._route, mode] = errors.get((self._route, mode), 0) + 1
        _log.warning("rate limit of route %r undecided (%s): failing %s", self._route, exc, mode)
        if self._open:
            return None
        return problem(
            503,
            "Service Unavailable",
            "The rate limit cannot be checked right now",
            [(b"retry-after", b"1")],
        )


def _groups(route: RouteSettings, ctx: PolicyContext, before: bool) -> Sequence[Policy]:
    limiter = ctx.limiter
    settings = route.rate_limit if route.rate_limit is not None else ctx.gateway.rate_limit
    if limiter is None or not settings.limits:
        return ()
    groups: dict[tuple[str, str | None], list[LimitSettings]] = {}
    for limit in settings.limits:
        if (limit.key in _BEFORE_AUTH) == before:
            header = limit.header.lower() if limit.header is not None else None
            groups.setdefault((limit.key, header), []).append(limit)
    metrics = rate_limit_metrics(ctx.metrics)
    metrics.limiter = limiter
    policies: list[Policy] = []
    for (key, header), limits in groups.items():
        namespace = f"{route.name}|{key}|{header or ''}"
        rates = [Rate(limit.requests, limit.per, limit.burst or 0) for limit in limits]
        bound = limiter.bind(namespace, rates)
        policies.append(
            RateLimitPolicy(route.name, limits, bound, on_error=settings.on_error, metrics=metrics)
        )
    return policies


def before_auth(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
    """The route's limits keyed by address, route or header (a :data:`PolicyFactory`)."""
    return _groups(route, ctx, before=True)


def after_auth(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
    """The route's limits keyed by client or subject (a :data:`PolicyFactory`)."""
    return _groups(route, ctx, before=False)
