"""Rate limiting: the GCRA math and the backends that keep its state.

:mod:`~bastion.ratelimit.gcra` is the pure algorithm (no clock reads, no I/O). A backend keeps
one *theoretical arrival time* per bucket and decides with it:

=====================  ===================================================================
``LocalLimiter``       this process only, decided synchronously (``local.py``)
``SQLiteLimiter``      a SQLite file shared by the processes of one machine: the embedded
                       default with ``bastion serve --workers N`` (``sqlite.py``)
``RedisLimiter``       one Lua script per decision on Redis's own clock, the decisions of one
                       event-loop turn pipelined into one round trip (``redis.py``)
=====================  ===================================================================

A caller binds a group of rates once (:meth:`Limiter.bind`) and asks the bound group for a
decision per request. Used by the gateway's rate-limit policy and by the authorization server's
own doors; imports nothing else of Bastion.
"""

from __future__ import annotations

from collections.abc import Awaitable
from collections.abc import Sequence
from typing import Protocol

from bastion.ratelimit.gcra import Rate
from bastion.ratelimit.gcra import Refusal

__all__ = ["BoundLimit", "Limiter", "LimiterUnavailable", "Rate", "Refusal", "Verdict"]

#: ``None``: admitted (and counted); a :class:`Refusal`: refused, nothing counted.
Verdict = Refusal | None


class LimiterUnavailable(Exception):
    """The backend could not decide (Redis unreachable, a timeout, a locked state file)."""


class BoundLimit(Protocol):
    """A group of rates bound to a namespace: every rate must admit a request, or none counts it."""

    def decide(self, value: str) -> Verdict | Awaitable[Verdict]:
        """Count one request of bucket ``value`` against every rate, or refuse it.

        Returns the verdict, or an awaitable of it (a backend across the network). The
        awaitable raises :class:`LimiterUnavailable` when the backend cannot decide.
        """


class Limiter(Protocol):
    """A backend: where the buckets' state lives."""

    #: Requests this process's backend admitted and counted so far (over every bound group);
    #: exported as ``bastion_gateway_rate_limit_admitted_total``.
    admitted: int

    def bind(self, namespace: str, rates: Sequence[Rate]) -> BoundLimit:
        """The group ``rates`` under ``namespace`` (a route and key kind, say). Buckets outlive
        the bound object: binding the same namespace and rates again (a reload) finds them."""

    async def close(self) -> None:
        """Release connections and files."""
