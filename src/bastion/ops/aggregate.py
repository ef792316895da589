"""One exposition for several worker processes: their metrics, merged.

``bastion serve --workers N`` runs N processes that count on their own. Prometheus should see one
target per server, so the supervisor asks every worker for its exposition (see
:mod:`bastion.ops.channel`) and merges them here:

* **counters, histograms and summaries** (every sample: ``_total``, ``_bucket``, ``_sum``,
  ``_count``) are summed per label set; the workers' ``_created`` samples are dropped (a
  per-process creation time means nothing for a sum);
* **gauges** are combined by the rule :data:`GAUGE_RULES` names for their family, ``max`` for any
  other (state every worker reads from the same stores, such as key ages and active bans, is
  the same in each, and ``max`` keeps it unchanged); a ratio is recomputed from the merged
  counters (:data:`DERIVED`).

**Totals never go down** while the supervisor runs. A worker that does not answer a scrape
(busy, stopping) keeps contributing its last snapshot. A worker slot whose process changed (its
pid differs from the last snapshot's: the worker was restarted) first moves the old process's
last counter values into a carried total, so the sum continues from where it was instead of
dropping to what the new process counted. A restart of the whole server starts every total
from zero again, which Prometheus reads as an ordinary counter reset.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Final
from typing import Literal

import orjson
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

__all__ = [
    "CACHED_KEYS",
    "DERIVED",
    "GAUGE_RULES",
    "MergedMetrics",
    "Snapshot",
    "held_keys",
    "keys_document",
    "parse_snapshot",
]

Rule = Literal["sum", "min", "max"]

#: How the workers' values of a gauge family combine (any family not listed: ``max``).
GAUGE_RULES: Final[dict[str, Rule]] = {
    # A feed is up for the server only while it is up in every worker.
    "bastion_feed_up": "min",
    # The most urgent view of the schedule (a worker whose key set lags says "overdue" first).
    "bastion_as_signing_key_rotation_seconds": "min",
    "bastion_as_signing_key_remaining_seconds": "min",
}

_SUMMED: Final = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Family:
    """A metric family's name, type and help text."""

    name: str
    type: str
    documentation: str


@dataclass
class Snapshot:
    """One worker's exposition, parsed: its families and every sample's value."""

    pid: int
    families: dict[str, Family] = field(default_factory=dict)
    #: family name → sample key → value
    samples: dict[str, dict[SampleKey, float]] = field(default_factory=dict)


def parse_snapshot(pid: int, text: str) -> Snapshot:
    """Parse the text exposition of the worker process ``pid``.

    Raises:
        ValueError: the text is not in the Prometheus text format.
    """
    snapshot = Snapshot(pid)
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):
            continue
        snapshot.families[family.name] = Family(family.name, family.type, family.documentation)
        values = snapshot.samples.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return snapshot


#: The gateway's gauge of the signing keys its validators hold: 1 per ``issuer`` and ``kid``.
CACHED_KEYS: Final = "bastion_gateway_jwks_cached_key"


def held_keys(snapshots: Iterable[Snapshot]) -> dict[str, frozenset[str]]:
    """The ``kid`` every one of ``snapshots`` (workers) holds, per issuer: a key only one worker
    has fetched is not held by the server, since the others would refuse its tokens."""
    held: dict[str, frozenset[str]] | None = None
    for snapshot in snapshots:
        mine: dict[str, set[str]] = {}
        for (_, labels), value in snapshot.samples.get(CACHED_KEYS, {}).items():
            label = dict(labels)
            if value and "issuer" in label and "kid" in label:
                mine.setdefault(label["issuer"], set()).add(label["kid"])
        if held is None:
            held = {issuer: frozenset(kids) for issuer, kids in mine.items()}
        else:
            held = {issuer: kids & mine.get(issuer, set()) for issuer, kids in held.items()}
    return held or {}


def keys_document(held: Mapping[str, Iterable[str]]) -> bytes:
    """The JSON of ``/keys``: ``{"issuers": {ISSUER: {"kids": [...]}}}``."""
    return orjson.dumps({"issuers": {issuer: {"kids": sorted(kids)} for issuer, kids in held.items()}})


def _hit_ratio(merged: dict[str, dict[SampleKey, float]]) -> float | None:
    lookups = merged.get("bastion_gateway_token_cache")
    if lookups is None:
        return None
    hits = sum(v for (_, labels), v in lookups.items() if ("result", "hit") in labels)
    total = sum(lookups.values())
    return hits / total if total else 0.0


#: Gauges recomputed from merged counters instead of combined.
DERIVED: Final[dict[str, Callable[[dict[str, dict[SampleKey, float]]], float | None]]] = {
    "bastion_gateway_token_cache_hit_ratio": _hit_ratio,
}


def _combine(rule: Rule, values: list[float]) -> float:
    if rule == "sum":
        return sum(values)
    return min(values) if rule == "min" else max(values)


class MergedMetrics(Collector):
    """The merged metrics of ``workers`` worker slots, refreshed by ``scrape`` on every collect.

    ``scrape()`` returns the snapshots of the workers that answered, by slot; the others keep
    their last one (see the module docstring).
    """

    def __init__(self, workers: int, scrape: Callable[[], dict[int, Snapshot]]) -> None:
        self._workers = workers
        self._scrape = scrape
        self._last: dict[int, Snapshot] = {}
        self._answered: set[int] = set()
        #: Summed samples of worker processes that have been replaced.
        self._carried: dict[str, dict[SampleKey, float]] = {}
        self._carried_families: dict[str, Family] = {}

    def update(self, worker: int, snapshot: Snapshot) -> None:
        """Take ``snapshot`` as worker ``worker``'s latest."""
        previous = self._last.get(worker)
        if previous is not None and previous.pid != snapshot.pid:
            for name, values in previous.samples.items():
                family = previous.families[name]
                if family.type not in _SUMMED:
                    continue
                self._carried_families[name] = family
                carried = self._carried.setdefault(name, {})
                for key, value in values.items():
                    carried[key] = carried.get(key, 0.0) + value
        self._last[worker] = snapshot

    def describe(self) -> Iterator[Metric]:
        """Nothing up front (families depend on what the workers export)."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """Scrape the workers, then yield the merged families."""
        answered = self._scrape()
        for worker, snapshot in answered.items():
            self.update(worker, snapshot)
        self._answered = set(answered)
        families: dict[str, Family] = dict(self._carried_families)
        summed: dict[str, dict[SampleKey, float]] = {
            name: dict(values) for name, values in self._carried.items()
        }
        gauges: dict[str, dict[SampleKey, list[float]]] = {}
        for snapshot in self._last.values():
            for name, values in snapshot.samples.items():
                family = families.setdefault(name, snapshot.families[name])
                if family.type in _SUMMED:
                    target = summed.setdefault(name, {})
                    for key, value in values.items():
                        target[key] = target.get(key, 0.0) + value
                else:
                    collected = gauges.setdefault(name, {})
                    for key, value in values.items():
                        collected.setdefault(key, []).append(value)
        for name, family in sorted(families.items()):
            metric = Metric(family.name, family.documentation, family.type)
            if name in DERIVED:
                derived = DERIVED[name](summed)
                if derived is not None:
                    metric.add_sample(name, {}, derived)
            elif name in summed:
                for (sample, labels), value in summed[name].items():
                    metric.add_sample(sample, dict(labels), value)
            else:
                rule = GAUGE_RULES.get(name, "max")
                for (sample, labels), seen in gauges.get(name, {}).items():
                    metric.add_sample(sample, dict(labels), _combine(rule, seen))
            yield metric
        up = GaugeMetricFamily(
            "bastion_worker_up", "1 when the worker answered this scrape, else 0.", labels=["worker"]
        )
        for worker in range(self._workers):
            up.add_metric([str(worker)], 1.0 if worker in self._answered else 0.0)
        yield up
