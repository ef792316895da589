"""Pure rules of the upstream layer: the circuit breaker, target parsing, selection, limits."""

from __future__ import annotations

import pytest

from bastion.gateway.breaker import CircuitBreaker
from bastion.gateway.limits import EngineLimits
from bastion.gateway.problems import problem
from bastion.gateway.upstream import NoTargetError
from bastion.gateway.upstream import UpstreamGroup


def test_breaker_opens_after_n_failures_in_the_window() -> None:
    breaker = CircuitBreaker(failures=3, window=10, open_seconds=5)
    breaker.record_failure(0)
    breaker.record_failure(1)
    assert breaker.allow(2)
    breaker.record_failure(2)
    assert breaker.state == "open"
    assert not breaker.allow(3)
    assert not breaker.would_allow(6.9)


def test_breaker_forgets_failures_outside_the_window() -> None:
    breaker = CircuitBreaker(failures=3, window=10, open_seconds=5)
    breaker.record_failure(0)
    breaker.record_failure(1)
    breaker.record_failure(11)
    assert breaker.state == "closed"


def test_a_request_in_flight_when_the_breaker_opened_does_not_close_it() -> None:
    breaker = CircuitBreaker(failures=1, window=10, open_seconds=5)
    breaker.record_failure(0)
    breaker.record_success(1)  # answered by the target, but sent before the opening
    assert breaker.state == "open"
    assert not breaker.allow(2)


def test_force_open_refuses_for_the_time_given_then_probes() -> None:
    breaker = CircuitBreaker(failures=0, window=10, open_seconds=5)  # failures alone never open it
    breaker.force_open(100, 30)
    assert breaker.state == "open"
    assert not breaker.allow(129.9)
    breaker.force_open(110, 5)  # a shorter opening does not cut the one in force
    assert not breaker.would_allow(120)
    assert breaker.allow(130)
    assert breaker.state == "half_open"
    breaker.record_success(130.1)
    assert breaker.state == "closed"


def test_breaker_half_open_lets_exactly_one_probe() -> None:
    breaker = CircuitBreaker(failures=1, window=10, open_seconds=5)
    breaker.record_failure(0)
    assert not breaker.allow(4)
    assert breaker.would_allow(5)
    assert breaker.allow(5)
    assert breaker.state == "half_open"
    assert not breaker.allow(5.1)
    breaker.record_success(5.2)
    assert breaker.state == "closed"
    assert breaker.allow(5.3)


def test_breaker_failed_probe_reopens() -> None:
    breaker = CircuitBreaker(failures=1, window=10, open_seconds=5)
    breaker.record_failure(0)
    assert breaker.allow(5)
    breaker.record_failure(6)
    assert breaker.state == "open"
    assert not breaker.allow(10)
    assert breaker.allow(11)


def test_breaker_lost_probe_is_replaced() -> None:
    breaker = CircuitBreaker(failures=1, window=10, open_seconds=5)
    breaker.record_failure(0)
    assert breaker.allow(5)
    # The probe's client went away and nothing was reported.
    assert not breaker.allow(9)
    assert breaker.allow(10)


def test_breaker_disabled() -> None:
    breaker = CircuitBreaker(failures=0)
    for t in range(100):
        breaker.record_failure(t)
    assert breaker.allow(100)


@pytest.mark.parametrize(
    ("spec", "address"),
    [
        ("127.0.0.1:8081", "127.0.0.1:8081"),
        ("http://svc.internal:9000", "svc.internal:9000"),
        ("http://svc.internal/", "svc.internal:80"),
        ("[::1]:8080", "[::1]:8080"),
        ("http://[::1]:8080", "[::1]:8080"),
        ("https://svc.internal", "svc.internal:443"),
    ],
)
def test_target_specs(spec: str, address: str) -> None:
    assert UpstreamGroup("g", [spec]).targets[0].address == address


@pytest.mark.parametrize("spec", ["http://svc:80/path", "svc:0", "svc:99999", "svc:abc", ":80", "ftp://x:1"])
def test_invalid_target_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        UpstreamGroup("g", [spec])


def test_group_validation() -> None:
    with pytest.raises(ValueError):
        UpstreamGroup("g", [])
    with pytest.raises(ValueError):
        UpstreamGroup("g", ["a:1", "a:1"])
    with pytest.raises(ValueError):
        UpstreamGroup("g", ["a:1"], max_per_target=0)
    with pytest.raises(ValueError):
        UpstreamGroup("g", ["a:1"], health_check_path="health")


def test_round_robin_skips_unhealthy_and_open_targets() -> None:
    group = UpstreamGroup("g", ["a:1", "b:1", "c:1"], breaker_failures=1)
    a, b, c = group.targets
    assert [group.select(0).address for _ in range(3)] == ["a:1", "b:1", "c:1"]
    b.down_until = 100
    assert {group.select(0).address for _ in range(4)} == {"a:1", "c:1"}
    c.breaker.record_failure(0)
    assert [group.select(1).address for _ in range(3)] == ["a:1"] * 3
    assert group.select(1, exclude=None) is a
    with pytest.raises(NoTargetError) as info:
        group.select(1, exclude=a)
    assert info.value.reason == "circuit_open"
    a.active_healthy = False
    c.down_until = 100
    with pytest.raises(NoTargetError) as info:
        group.select(1)
    assert info.value.reason == "no_healthy_target"


def test_has_alternative() -> None:
    group = UpstreamGroup("g", ["a:1", "b:1"])
    a, b = group.targets
    assert group.has_alternative(0, a)
    b.down_until = 10
    assert not group.has_alternative(0, a)


def test_engine_limits_validation() -> None:
    assert EngineLimits().max_body == 10 * 1024 * 1024
    with pytest.raises(ValueError):
        EngineLimits(max_headers=0)
    with pytest.raises(ValueError):
        EngineLimits(header_timeout=0)
    with pytest.raises(ValueError):
        EngineLimits(write_buffer_low=10, write_buffer_high=5)
    with pytest.raises(AttributeError):
        EngineLimits().max_body = 1  # type: ignore[misc]


def test_problem_details() -> None:
    headers, body = problem(502, "The upstream service could not be reached.")
    assert (b"content-type", b"application/problem+json") in headers
    assert body == (
        b'{"type":"about:blank","title":"Bad Gateway","status":502,'
        b'"detail":"The upstream service could not be reached."}'
    )
    headers.append((b"x", b"y"))
    assert (b"x", b"y") not in problem(502, "The upstream service could not be reached.")[0]
