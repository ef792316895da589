"""The authorization server's Prometheus metrics, counted in dicts and exported on scrape.

The token endpoint is the server's hot path (see ``bench/``), so counting there is a dict
lookup and an add (:mod:`bastion.ops.counting`); the signing-key gauges are computed from the
process's key set only when scraped.

Metric families (counters end in ``_total`` on the wire):

* ``bastion_as_token_requests_total{grant_type,outcome}`` — token endpoint answers; ``outcome``
  is ``ok`` or the RFC 6749 §5.2 error code (``invalid_grant``, ``invalid_client`` …);
* ``bastion_as_requests_total{endpoint,status}`` and
  ``bastion_as_request_duration_seconds{endpoint}`` (histogram) — every request by endpoint
  (the route's path; ``other`` for anything unrouted);
* ``bastion_as_signins_total{outcome}`` — password sign-ins: ``ok``, ``failed`` (unknown user,
  wrong password and disabled account alike) or ``throttled``;
* ``bastion_as_throttled_total{throttle,gate}`` — requests refused by a limit: ``login``
  (gates ``account``, ``address``), ``client_auth`` (``client_address``, ``address``,
  ``client``) and ``client_rate`` (``client``);
* ``bastion_as_refresh_reuse_total{action}`` — a rotated refresh token presented again:
  ``revoked`` (the family was revoked) or ``grace_replay`` (answered within
  ``insecure_refresh_reuse_window``);
* ``bastion_as_signing_keys{alg,state}`` — keys by lifecycle state;
* ``bastion_as_signing_key_age_seconds{alg,kid,state}`` — seconds since each pending, active
  or retired key was created;
* ``bastion_as_signing_key_rotation_seconds{alg}`` — seconds until the rotation schedule
  creates the next key of ``alg`` (negative: overdue);
* ``bastion_as_signing_key_remaining_seconds{alg}`` — seconds the active key of ``alg`` has
  left to sign before its planned successor takes over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import Any
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bastion.ops.counting import Histogram
from bastion.ops.counting import counter_family
from bastion.ops.counting import histogram_family

if TYPE_CHECKING:
    from bastion.services.keys import KeyService

__all__ = ["ServerMetrics"]

SIGNIN_OUTCOMES: Final = (("ok",), ("failed",), ("throttled",))
THROTTLE_GATES: Final = (
    ("login", "account"),
    ("login", "address"),
    ("client_auth", "client_address"),
    ("client_auth", "address"),
    ("client_auth", "client"),
    ("client_rate", "client"),
)
REUSE_ACTIONS: Final = (("revoked",), ("grace_replay",))

#: The label of anything outside the bounded label sets (unknown grant types, unrouted paths).
OTHER = "other"


class ServerMetrics(Collector):
    """The counters of one authorization-server process; see the module docstring."""

    def __init__(self, keys: KeyService | None = None, *, clock: Callable[[], float] = time.time) -> None:
        """Count; with ``keys``, export the signing-key gauges too (read at scrape, at ``clock()``)."""
        self._keys = keys
        self._clock = clock
        self.token_requests: dict[tuple[str, str], int] = {}
        self.requests: dict[tuple[str, str], int] = {}
        self.latency: dict[tuple[str], Histogram] = {}
        # The bounded label sets start at zero: a series exists before its first count, so
        # rate() and increase() see that first count too.
        self.signins: dict[tuple[str], int] = dict.fromkeys(SIGNIN_OUTCOMES, 0)
        self.throttled: dict[tuple[str, str], int] = dict.fromkeys(THROTTLE_GATES, 0)
        self.refresh_reuse: dict[tuple[str], int] = dict.fromkeys(REUSE_ACTIONS, 0)

    # -- counting -------------------------------------------------------------------------

    def token(self, grant_type: str, outcome: str) -> None:
        """Count one token-endpoint answer (``grant_type`` already bounded by the caller)."""
        key = (grant_type, outcome)
        self.token_requests[key] = self.token_requests.get(key, 0) + 1

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one finished request of ``endpoint``."""
        key = (endpoint, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get((endpoint,))
        if histogram is None:
            histogram = self.latency[(endpoint,)] = Histogram()
        histogram.observe(seconds)

    def signin(self, outcome: str) -> None:
        """Count a password sign-in: ``ok``, ``failed`` or ``throttled``."""
        self.signins[(outcome,)] = self.signins.get((outcome,), 0) + 1

    def throttle(self, throttle: str, gate: str) -> None:
        """Count a request refused by ``throttle`` at ``gate``."""
        key = (throttle, gate)
        self.throttled[key] = self.throttled.get(key, 0) + 1

    def reuse(self, action: str) -> None:
        """Count a rotated refresh token presented again, and what was done."""
        self.refresh_reuse[(action,)] = self.refresh_reuse.get((action,), 0) + 1

    # -- export ---------------------------------------------------------------------------

    def describe(self) -> Iterator[Any]:
        """Nothing up front (families are built on scrape)."""
        return iter(())

    def collect(self) -> Iterator[Any]:
        """The metric families (called on scrape)."""
        yield counter_family(
            "bastion_as_token_requests",
            "Token endpoint answers by grant type and outcome (ok or the RFC 6749 error code).",
            ["grant_type", "outcome"],
            self.token_requests,
        )
        yield counter_family(
            "bastion_as_requests", "Requests by endpoint and status.", ["endpoint", "status"], self.requests
        )
        yield histogram_family(
            "bastion_as_request_duration_seconds", "Request time by endpoint.", ["endpoint"], self.latency
        )
        yield counter_family("bastion_as_signins", "Password sign-ins by outcome.", ["outcome"], self.signins)
        yield counter_family(
            "bastion_as_throttled",
            "Requests refused by the sign-in throttle, the client-authentication lockout or the "
            "client rate limit, by gate.",
            ["throttle", "gate"],
            self.throttled,
        )
        yield counter_family(
            "bastion_as_refresh_reuse",
            "Rotated refresh tokens presented again, by what was done.",
            ["action"],
            self.refresh_reuse,
        )
        if self._keys is not None:
            yield from self._key_families(self._keys)

    def _key_families(self, keys: KeyService) -> Iterator[GaugeMetricFamily]:
        from bastion.services.keys import KeyState

        now = self._clock()
        counts = GaugeMetricFamily(
            "bastion_as_signing_keys",
            "Signing keys by algorithm and lifecycle state.",
            labels=["alg", "state"],
        )
        ages = GaugeMetricFamily(
            "bastion_as_signing_key_age_seconds",
            "Seconds since each published signing key was created.",
            labels=["alg", "kid", "state"],
        )
        tally: dict[tuple[str, str], int] = {}
        for key in keys.all_keys():
            state = keys.state(key, now)
            tally[(key.alg, state.value)] = tally.get((key.alg, state.value), 0) + 1
            if state in (KeyState.PENDING, KeyState.ACTIVE, KeyState.RETIRED):
                ages.add_metric([key.alg, key.kid, state.value], now - key.created_at)
        for alg in keys.policy.algorithms:
            for state in KeyState:
                counts.add_metric([alg, state.value], tally.get((alg, state.value), 0))
        yield counts
        yield ages
        rotation = GaugeMetricFamily(
            "bastion_as_signing_key_rotation_seconds",
            "Seconds until the rotation schedule creates the next key (negative: overdue).",
            labels=["alg"],
        )
        remaining = GaugeMetricFamily(
            "bastion_as_signing_key_remaining_seconds",
            "Seconds the active key has left to sign before its planned successor takes over.",
            labels=["alg"],
        )
        for alg in keys.policy.algorithms:
            schedule = keys.schedule(alg, now)
            if schedule is not None:
                rotation.add_metric([alg], schedule.rotation_due - now)
                remaining.add_metric([alg], schedule.active_until - now)
        yield rotation
        yield remaining
