"""The alert rules' pure logic: thresholds, windows, ``for``, cool-down, ``min_requests`` and
resolution, decided from counters and a time handed in (no clock, no I/O)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pydantic import ValidationError

from bastion.ops.alerts import Evaluator
from bastion.ops.alerts import Fired
from bastion.ops.alerts import Readings
from bastion.ops.alerts import Resolved
from bastion.settings import AlertRuleSettings
from bastion.settings import AlertsSettings
from bastion.settings import Settings


def rule(**options: Any) -> AlertRuleSettings:
    base: dict[str, Any] = {"name": "spike", "kind": "http_5xx_ratio", "threshold": 0.5, "min_requests": 10}
    return AlertRuleSettings.model_validate({**base, **options})


def evaluator(*rules: AlertRuleSettings) -> Evaluator:
    ids = (f"a{n}" for n in itertools.count(1))
    return Evaluator(rules, new_id=lambda: next(ids))


class Traffic:
    """Cumulative gateway counters, as ``GatewayMetrics.requests`` holds them."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}

    def add(self, route: str, status: int, count: int) -> Readings:
        self.requests[(route, status)] = self.requests.get((route, status), 0) + count
        return self.readings()

    def readings(self) -> Readings:
        return Readings(requests={"route": dict(self.requests)})


def test_a_5xx_ratio_over_the_threshold_fires_once_per_route_and_resolves() -> None:
    ev = evaluator(rule(window=60))
    traffic = Traffic()
    assert ev.evaluate(0, traffic.readings()) == []
    traffic.add("/api", 200, 5)
    traffic.add("/other", 500, 20)
    changes = ev.evaluate(10, traffic.add("/api", 500, 15))
    assert len(changes) == 2
    fired = {change.alert.labels: change.alert for change in changes if isinstance(change, Fired)}
    api = fired[(("route", "/api"),)]
    assert (api.rule, api.kind, api.value, api.threshold, api.since) == (
        "spike",
        "http_5xx_ratio",
        0.75,
        0.5,
        10,
    )
    assert fired[(("route", "/other"),)].value == 1.0
    assert api.key == "spike|route=/api"
    # Still over the threshold: no second firing.
    assert ev.evaluate(20, traffic.add("/api", 500, 1)) == []
    assert {a.label("route") for a in ev.firing()} == {"/api", "/other"}
    # The window moves past the errors: successes only in the last 60 s.
    traffic.add("/other", 200, 30)
    changes = ev.evaluate(80, traffic.add("/api", 200, 40))
    assert sorted((type(c).__name__, c.alert.label("route"), getattr(c, "value", None)) for c in changes) == [
        ("Resolved", "/api", 0.0),
        ("Resolved", "/other", 0.0),
    ]
    assert ev.firing() == []


def test_min_requests_keeps_a_quiet_route_from_firing() -> None:
    ev = evaluator(rule(min_requests=10))
    traffic = Traffic()
    ev.evaluate(0, traffic.readings())
    assert ev.evaluate(5, traffic.add("/api", 500, 9)) == []
    changes = ev.evaluate(6, traffic.add("/api", 500, 1))
    assert [type(c) for c in changes] == [Fired]
    assert changes[0].alert.value == 1.0


def test_the_ratio_is_a_windowed_delta_not_the_lifetime_total() -> None:
    ev = evaluator(rule(window=60, threshold=0.2))
    traffic = Traffic()
    ev.evaluate(0, traffic.add("/api", 200, 1000))  # long before: many successes
    ev.evaluate(100, traffic.readings())
    # 30 errors out of 40 in the last minute: 75 %, though 30 of 1040 over the lifetime.
    traffic.add("/api", 200, 10)
    changes = ev.evaluate(130, traffic.add("/api", 500, 30))
    assert [(type(c), c.alert.value) for c in changes] == [(Fired, 0.75)]


def test_a_young_process_counts_from_its_start() -> None:
    ev = evaluator(rule(window=300))
    traffic = Traffic()
    ev.evaluate(0, traffic.readings())
    changes = ev.evaluate(10, traffic.add("/api", 503, 10))
    assert [type(c) for c in changes] == [Fired]


def test_for_needs_the_condition_at_every_evaluation_for_that_long() -> None:
    ev = evaluator(rule(**{"for": 30}))
    traffic = Traffic()
    ev.evaluate(0, traffic.readings())
    assert ev.evaluate(10, traffic.add("/api", 500, 20)) == []  # pending since 10
    assert ev.evaluate(30, traffic.readings()) == []
    # A blip under the threshold resets the clock.
    assert ev.evaluate(35, traffic.add("/api", 200, 200)) == []
    assert ev.evaluate(40, traffic.add("/api", 500, 1000)) == []  # pending since 40
    assert ev.evaluate(60, traffic.readings()) == []
    changes = ev.evaluate(70, traffic.readings())
    assert [(type(c), c.alert.since) for c in changes] == [(Fired, 70)]


def test_cooldown_keeps_a_flapping_alert_from_firing_again() -> None:
    ev = evaluator(rule(window=10, cooldown=100))
    traffic = Traffic()
    ev.evaluate(0, traffic.readings())
    first = ev.evaluate(5, traffic.add("/api", 500, 20))
    assert [type(c) for c in first] == [Fired]
    resolved = ev.evaluate(20, traffic.add("/api", 200, 50))
    assert [(type(c), c.alert.id) for c in resolved] == [(Resolved, "a1")]
    assert ev.evaluate(30, traffic.add("/api", 500, 100)) == []  # back within the cool-down
    assert ev.evaluate(104, traffic.add("/api", 500, 100)) == []
    again = ev.evaluate(106, traffic.add("/api", 500, 100))
    assert [(type(c), c.alert.id) for c in again] == [(Fired, "a2")]


def test_an_alert_another_process_fired_resolves_silently_here() -> None:
    ev = evaluator(rule(window=10))
    traffic = Traffic()
    ev.evaluate(0, traffic.readings())
    (fired,) = ev.evaluate(5, traffic.add("/api", 500, 20))
    assert isinstance(fired, Fired)
    ev.lost(fired.alert)
    assert ev.evaluate(6, traffic.add("/api", 500, 1)) == []  # still firing: not again
    assert ev.evaluate(30, traffic.add("/api", 200, 50)) == []  # resolved, but not ours to report
    assert ev.firing() == []


def test_requests_refused_before_routing_are_not_a_route() -> None:
    ev = evaluator(rule())
    traffic = Traffic()
    ev.evaluate(0, traffic.readings())
    assert ev.evaluate(1, traffic.add("-", 500, 50)) == []


def test_endpoints_of_the_authorization_server_are_labelled_as_such() -> None:
    ev = evaluator(rule())
    ev.evaluate(0, Readings(requests={"endpoint": {}}))
    (fired,) = ev.evaluate(1, Readings(requests={"endpoint": {("/token", "500"): 10, ("/token", "200"): 5}}))
    assert isinstance(fired, Fired)
    assert fired.alert.labels == (("endpoint", "/token"),)
    assert fired.alert.value == 0.6667


@pytest.mark.parametrize("kind", ["signin_failures", "refresh_reuse"])
def test_counts_over_a_window(kind: str) -> None:
    ev = evaluator(rule(name="burst", kind=kind, threshold=5, window=60))
    ev.evaluate(0, Readings(**{kind: 100}))
    assert ev.evaluate(10, Readings(**{kind: 104})) == []
    (fired,) = ev.evaluate(20, Readings(**{kind: 105}))
    assert isinstance(fired, Fired)
    assert (fired.alert.labels, fired.alert.value) == ((), 5.0)
    assert ev.evaluate(65, Readings(**{kind: 105})) == []  # 5 since t=0 still
    (resolved,) = ev.evaluate(70, Readings(**{kind: 105}))  # 1 since t=10
    assert isinstance(resolved, Resolved)
    assert resolved.value == 1.0


def test_a_process_without_the_counter_does_not_judge_the_rule() -> None:
    ev = evaluator(
        rule(name="burst", kind="refresh_reuse", threshold=1), rule(name="k", kind="key_expiry", threshold=0)
    )
    traffic = Traffic()
    assert ev.evaluate(0, traffic.readings()) == []
    assert ev.evaluate(1, traffic.add("/api", 200, 5)) == []


def test_key_expiry_fires_below_the_threshold_per_algorithm() -> None:
    ev = evaluator(rule(name="keys", kind="key_expiry", threshold=600))
    assert ev.evaluate(0, Readings(key_rotation={"ES256": 5000.0, "RS256": 700.0})) == []
    (fired,) = ev.evaluate(10, Readings(key_rotation={"ES256": 4990.0, "RS256": 590.0}))
    assert isinstance(fired, Fired)
    assert (fired.alert.labels, fired.alert.value) == ((("alg", "RS256"),), 590.0)
    (resolved,) = ev.evaluate(20, Readings(key_rotation={"ES256": 4980.0, "RS256": 86000.0}))
    assert isinstance(resolved, Resolved)


def test_address_rules_are_not_evaluated_here() -> None:
    address = rule(name="burst", kind="auth_failures_per_address", threshold=5)
    per_address = rule(name="signin", kind="signin_failures", threshold=5, per="address")
    assert evaluator(address, per_address).rules == ()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 5}, "share between 0 and 1"),
        ({"kind": "refresh_reuse", "threshold": 0.5}, "count of at least 1"),
        ({"actions": ["ban"]}, "ban action needs a rule about one address"),
        ({"kind": "refresh_reuse", "threshold": 2, "actions": ["open_circuit"]}, "open_circuit action"),
        ({"actions": ["webhook"]}, "name a webhook"),
        ({"webhook": "ops"}, "name a webhook"),
        ({"name": "bad name"}, "name"),
    ],
)
def test_inconsistent_rules_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        rule(**options)


def test_rules_name_known_webhooks_and_distinct_names() -> None:
    with pytest.raises(ValidationError, match=r"no \[alerts.webhooks.ops\]"):
        AlertsSettings.model_validate(
            {"rules": [{**rule().model_dump(), "actions": ["webhook"], "webhook": "ops"}]}
        )
    with pytest.raises(ValidationError, match="two alert rules are named 'spike'"):
        AlertsSettings.model_validate({"rules": [rule().model_dump(), rule().model_dump()]})
    with pytest.raises(ValidationError, match="exactly one of secret_env or secret_file"):
        AlertsSettings.model_validate({"webhooks": {"ops": {"url": "https://hooks.example"}}})


def test_address_rules_need_the_gateway_bans() -> None:
    with pytest.raises(ValidationError, match=r"needs \[gateway.bans\] enabled"):
        Settings.model_validate(
            {
                "gateway": {"bans": {"enabled": False}},
                "alerts": {"rules": [{"name": "a", "kind": "auth_failures_per_address", "threshold": 3}]},
            }
        )
