"""Counters for hot paths: plain ints in dicts, exported as metric families when scraped.

prometheus-client's own ``Counter`` and ``Histogram`` take a lock per increment and build a
child per label set; a request path that counts a few things pays more for that than for the
work it counts. So the apps count in dicts keyed by label tuples (a dict lookup and an add),
and a custom ``Collector`` turns the dicts into families on scrape with the helpers here.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any
from typing import Final

from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import HistogramMetricFamily

__all__ = ["LATENCY_BUCKETS", "Histogram", "counter_family", "histogram_family", "status_class"]

#: Latency buckets in seconds (a gateway adds well under a millisecond; upstreams and password
#: hashing take longer).
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_BOUNDS: Final = (*(repr(bound) for bound in LATENCY_BUCKETS), "+Inf")


class Histogram:
    """Observations in :data:`LATENCY_BUCKETS` (one count per bucket, not cumulative) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """The cumulative ``(le, count)`` pairs of the exposition format."""
        cumulative = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip(_BOUNDS, self.counts, strict=True):
            cumulative += count
            out.append((bound, cumulative))
        return out


def counter_family(
    name: str, documentation: str, labels: Iterable[str], counts: Mapping[Any, int]
) -> CounterMetricFamily:
    """A counter family (``name`` without ``_total``) from counts keyed by tuples of label
    values (one per label)."""
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for values, count in list(counts.items()):
        family.add_metric(list(values), count)
    return family


def histogram_family(
    name: str, documentation: str, labels: Iterable[str], histograms: Mapping[Any, Histogram]
) -> HistogramMetricFamily:
    """A histogram family from :class:`Histogram` objects keyed by label values."""
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, histogram in list(histograms.items()):
        family.add_metric(list(values), histogram.buckets(), histogram.sum)
    return family


def status_class(status: int) -> str:
    """``"2xx"`` … ``"5xx"`` for an HTTP status code (a bounded label)."""
    return f"{status // 100}xx" if 100 <= status < 600 else "other"
