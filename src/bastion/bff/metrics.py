"""The BFF's Prometheus metrics, counted in dicts and exported on scrape.

* ``bastion_bff_signins_total{outcome}`` — completed sign-in callbacks: ``ok``, ``no_login``
  (no sign-in in progress in that browser, or it expired), ``mismatch`` (``state`` or ``iss``
  of another request), ``error`` (the authorization server answered with an error),
  ``refused`` (the code exchange was refused) or ``upstream_error`` (unreachable, or an
  invalid answer);
* ``bastion_bff_refreshes_total{outcome}`` — server-side token refreshes: ``ok``, ``refused``
  (the session ends), ``timeout`` (another request's refresh took too long) or
  ``upstream_error``;
* ``bastion_bff_api_requests_total{status_class}`` — API proxy answers (``2xx`` … ``5xx``,
  the BFF's own refusals included);
* ``bastion_bff_logouts_total``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from bastion.ops.counting import counter_family
from bastion.ops.counting import status_class

__all__ = ["BffMetrics"]


class BffMetrics(Collector):
    """The counters of one BFF process; see the module docstring."""

    def __init__(self) -> None:
        """Empty counters; the composition root registers them on its registry."""
        # Every outcome starts at zero: a series exists before its first count.
        self.signins: dict[tuple[str], int] = dict.fromkeys(
            (("ok",), ("no_login",), ("mismatch",), ("error",), ("refused",), ("upstream_error",)), 0
        )
        self.refreshes: dict[tuple[str], int] = dict.fromkeys(
            (("ok",), ("refused",), ("timeout",), ("upstream_error",)), 0
        )
        self.api_requests: dict[tuple[str], int] = dict.fromkeys((("2xx",), ("4xx",), ("5xx",)), 0)
        self.logouts = 0

    def signin(self, outcome: str) -> None:
        """Count a sign-in callback's outcome."""
        self.signins[(outcome,)] = self.signins.get((outcome,), 0) + 1

    def refresh(self, outcome: str) -> None:
        """Count a token refresh's outcome."""
        self.refreshes[(outcome,)] = self.refreshes.get((outcome,), 0) + 1

    def api(self, status: int) -> None:
        """Count an API proxy answer."""
        key = (status_class(status),)
        self.api_requests[key] = self.api_requests.get(key, 0) + 1

    def describe(self) -> Iterator[Any]:
        """Nothing up front (families are built on scrape)."""
        return iter(())

    def collect(self) -> Iterator[Any]:
        """The metric families (called on scrape)."""
        yield counter_family(
            "bastion_bff_signins", "Sign-in callbacks by outcome.", ["outcome"], self.signins
        )
        yield counter_family(
            "bastion_bff_refreshes", "Server-side token refreshes by outcome.", ["outcome"], self.refreshes
        )
        yield counter_family(
            "bastion_bff_api_requests",
            "API proxy answers by status class.",
            ["status_class"],
            self.api_requests,
        )
        yield CounterMetricFamily("bastion_bff_logouts", "Sessions ended by a logout.", value=self.logouts)
