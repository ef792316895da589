"""Alert rules: when an alert fires and when it resolves, decided from one process's counters.

Pure logic, no I/O and no clock of its own: :class:`Evaluator` is handed the time and the
process's cumulative counters (:class:`Readings`) at each evaluation, keeps a short history of
them, and returns what changed (:class:`Fired`, :class:`Resolved`).
:mod:`bastion.ops.alerting` runs it on a timer, elects one firing among the processes sharing
the fast-state store, and carries out the rule's actions.

Per rule and label set (one route, one algorithm …) an alert moves through:

* *inactive* → *pending* when the rule's condition holds at an evaluation;
* *pending* → *firing* once it has held at every evaluation for ``for`` seconds, unless the same
  alert fired less than ``cooldown`` seconds ago (:class:`Fired`);
* *pending* or *firing* → *inactive* at the first evaluation where it no longer holds; a firing
  alert then reports :class:`Resolved` (unless another process owns it, see :meth:`Evaluator.lost`).

Counts and ratios are windowed deltas: the difference between the counters now and the newest
reading at least ``window`` seconds old (the oldest one while the process is younger than
that; the first reading is taken when the process starts, all zeros).

Rules about one client address (``auth_failures_per_address``, ``signin_failures`` per address)
are counted in the fast-state store as the failures happen, not here.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from collections.abc import Hashable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from bastion.settings import AlertRuleSettings

__all__ = ["Alert", "Evaluator", "Fired", "Readings", "Resolved", "Transition", "holds"]

Labels = tuple[tuple[str, str], ...]
#: The route label of requests refused before routing (never alerted on).
_NO_ROUTE = "-"


@dataclass(frozen=True, slots=True)
class Alert:
    """One firing of a rule for one label set."""

    #: Names this firing in every event and message it causes.
    id: str
    rule: str
    kind: str
    #: What the alert is about: ``(("route", "/api"),)``, ``(("address", "203.0.113.7"),)`` …
    labels: Labels
    #: The measured value (a ratio, a count, seconds) when it fired.
    value: float
    threshold: float
    #: When it fired (POSIX seconds).
    since: float

    @property
    def key(self) -> str:
        """The rule and labels as one string (the cross-process election key's tail)."""
        return self.rule + "".join(f"|{name}={value}" for name, value in self.labels)

    def label(self, name: str) -> str | None:
        """The value of label ``name``, if the alert has it."""
        return dict(self.labels).get(name)

    def as_dict(self) -> dict[str, Any]:
        """The alert as JSON-ready data (audit details, webhook messages)."""
        return {
            "alert_id": self.id,
            "rule": self.rule,
            "kind": self.kind,
            "labels": dict(self.labels),
            "value": self.value,
            "threshold": self.threshold,
            "since": self.since,
        }


@dataclass(frozen=True, slots=True)
class Fired:
    """An alert started firing."""

    alert: Alert


@dataclass(frozen=True, slots=True)
class Resolved:
    """A firing alert's condition no longer holds."""

    alert: Alert
    #: The value at resolution (``None``: nothing measured any more, e.g. too few requests).
    value: float | None
    at: float


Transition = Fired | Resolved


@dataclass(slots=True)
class Readings:
    """One process's counters at one evaluation; ``None``: this process does not count that."""

    #: Answered requests by label name (``route`` for the gateway, ``endpoint`` for the
    #: authorization server): ``{(label value, status): count}``, cumulative.
    requests: Mapping[str, Mapping[tuple[str, Any], int]] = field(default_factory=dict)
    #: Failed password sign-ins, cumulative.
    signin_failures: int | None = None
    #: Reused refresh tokens whose family was revoked, cumulative.
    refresh_reuse: int | None = None
    #: Seconds until the rotation schedule must create the next key, by algorithm (a gauge).
    key_rotation: Mapping[str, float] | None = None


def holds(rule: AlertRuleSettings, value: float | None) -> bool:
    """Whether ``value`` meets ``rule``: at least the threshold, or below it for ``key_expiry``
    (``None``, nothing to judge, never holds)."""
    if value is None:
        return False
    if rule.kind == "key_expiry":
        return value < rule.threshold
    return value >= rule.threshold


def _flatten(readings: Readings) -> dict[Hashable, int]:
    """The cumulative counters as one flat mapping (what the history keeps)."""
    flat: dict[Hashable, int] = {}
    for label, counts in readings.requests.items():
        for (value, status), count in list(counts.items()):
            total = ("http", label, value, "all")
            flat[total] = flat.get(total, 0) + count
            if 500 <= int(status) <= 599:
                errors = ("http", label, value, "5xx")
                flat[errors] = flat.get(errors, 0) + count
    if readings.signin_failures is not None:
        flat[("signin_failures",)] = readings.signin_failures
    if readings.refresh_reuse is not None:
        flat[("refresh_reuse",)] = readings.refresh_reuse
    return flat


@dataclass(slots=True)
class _State:
    pending: float | None = None
    alert: Alert | None = None
    #: Whether this process owns the firing alert (won the election; reports its resolution).
    owned: bool = True
    quiet_until: float = float("-inf")


class Evaluator:
    """Decides the periodic rules of one process (see the module docstring)."""

    def __init__(
        self, rules: Sequence[AlertRuleSettings], *, new_id: Callable[[], str] = lambda: secrets.token_hex(8)
    ) -> None:
        """Evaluate the ``rules`` that are not about one address; ``new_id`` names each firing."""
        self.rules = tuple(rule for rule in rules if not rule.by_address)
        self._new_id = new_id
        self._span = max((rule.window for rule in self.rules), default=0.0)
        self._history: deque[tuple[float, dict[Hashable, int]]] = deque()
        self._states: dict[tuple[str, Labels], _State] = {}

    def firing(self) -> list[Alert]:
        """The alerts firing now (owned here or elsewhere)."""
        return [state.alert for state in self._states.values() if state.alert is not None]

    def lost(self, alert: Alert) -> None:
        """Another process fired ``alert`` first: keep it quiet here, and leave its resolution
        to that process."""
        state = self._states.get((alert.rule, alert.labels))
        if state is not None and state.alert is alert:
            state.owned = False

    def evaluate(self, now: float, readings: Readings) -> list[Transition]:
        """Record ``readings`` taken at ``now`` and return the alerts that fired or resolved."""
        self._record(now, _flatten(readings))
        changes: list[Transition] = []
        for rule in self.rules:
            values = self._measure(rule, now, readings)
            if values is None:
                continue  # this process does not count what the rule watches
            known = {labels for name, labels in self._states if name == rule.name}
            for labels in sorted(known | set(values)):
                changes.extend(self._step(rule, labels, values.get(labels), now))
        return changes

    def _step(
        self, rule: AlertRuleSettings, labels: Labels, value: float | None, now: float
    ) -> list[Transition]:
        key = (rule.name, labels)
        state = self._states.setdefault(key, _State())
        out: list[Transition] = []
        if holds(rule, value):
            assert value is not None
            if state.pending is None:
                state.pending = now
            if state.alert is None and now - state.pending >= rule.hold and now >= state.quiet_until:
                alert = Alert(self._new_id(), rule.name, rule.kind, labels, value, rule.threshold, now)
                state.alert, state.owned, state.quiet_until = alert, True, now + rule.cooldown
                out.append(Fired(alert))
            return out
        state.pending = None
        if state.alert is not None:
            if state.owned:
                out.append(Resolved(state.alert, value, now))
            state.alert = None
        if state.quiet_until <= now:
            del self._states[key]
        return out

    # -- measuring ------------------------------------------------------------------------------

    def _record(self, now: float, flat: dict[Hashable, int]) -> None:
        history = self._history
        history.append((now, flat))
        # Keep the newest reading at least the longest window old, and everything after it.
        while len(history) >= 2 and history[1][0] <= now - self._span:
            history.popleft()

    def _delta(self, now: float, window: float) -> dict[Hashable, int]:
        history = self._history
        current = history[-1][1]
        base = history[0][1]
        for at, counts in history:
            if at > now - window:
                break
            base = counts
        return {key: count - base.get(key, 0) for key, count in current.items()}

    def _measure(
        self, rule: AlertRuleSettings, now: float, readings: Readings
    ) -> dict[Labels, float | None] | None:
        """The rule's value for each label set, or ``None`` when this process has no such counter."""
        kind = rule.kind
        if kind == "key_expiry":
            if readings.key_rotation is None:
                return None
            return {(("alg", alg),): round(seconds, 3) for alg, seconds in readings.key_rotation.items()}
        if kind in ("signin_failures", "refresh_reuse"):
            if getattr(readings, kind) is None:
                return None
            return {(): float(self._delta(now, rule.window).get((kind,), 0))}
        if not readings.requests:
            return None
        delta = self._delta(now, rule.window)
        values: dict[Labels, float | None] = {}
        for key, total in delta.items():
            if not (isinstance(key, tuple) and key[0] == "http" and key[3] == "all") or key[2] == _NO_ROUTE:
                continue
            errors = delta.get(("http", key[1], key[2], "5xx"), 0)
            labels = ((str(key[1]), str(key[2])),)
            values[labels] = round(errors / total, 4) if total >= rule.min_requests else None
        return values
