"""The merge of workers' expositions: sums, gauge rules, and totals that never go down."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bastion.ops.aggregate import MergedMetrics
from bastion.ops.aggregate import Snapshot
from bastion.ops.aggregate import parse_snapshot
from bastion.ops.counting import Histogram
from bastion.ops.counting import histogram_family


def exposition(requests: int, latency: float, feed_up: int, rotation: float, hits: int, misses: int) -> str:
    return f"""# HELP bastion_gateway_requests_total Requests.
# TYPE bastion_gateway_requests_total counter
bastion_gateway_requests_total{{route="/api",status="200"}} {requests}
# HELP bastion_feed_up Feed up.
# TYPE bastion_feed_up gauge
bastion_feed_up{{feed="keys"}} {feed_up}
# HELP bastion_as_signing_key_rotation_seconds Rotation.
# TYPE bastion_as_signing_key_rotation_seconds gauge
bastion_as_signing_key_rotation_seconds{{alg="ES256"}} {rotation}
# HELP bastion_gateway_bans_active Bans.
# TYPE bastion_gateway_bans_active gauge
bastion_gateway_bans_active 2
# HELP bastion_gateway_token_cache_total Cache.
# TYPE bastion_gateway_token_cache_total counter
bastion_gateway_token_cache_total{{result="hit"}} {hits}
bastion_gateway_token_cache_total{{result="miss"}} {misses}
# HELP bastion_gateway_token_cache_hit_ratio Ratio.
# TYPE bastion_gateway_token_cache_hit_ratio gauge
bastion_gateway_token_cache_hit_ratio {hits / (hits + misses)}
# HELP bastion_gateway_request_duration_seconds Latency.
# TYPE bastion_gateway_request_duration_seconds histogram
bastion_gateway_request_duration_seconds_bucket{{route="/api",le="0.1"}} {requests}
bastion_gateway_request_duration_seconds_bucket{{route="/api",le="+Inf"}} {requests}
bastion_gateway_request_duration_seconds_sum{{route="/api"}} {latency}
bastion_gateway_request_duration_seconds_count{{route="/api"}} {requests}
"""


def samples(merged: MergedMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(merged)
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Workers:
    """What each worker answers to the next scrape (``None``: it does not answer)."""

    def __init__(self) -> None:
        self.answers: dict[int, Snapshot | None] = {}

    def __call__(self) -> dict[int, Snapshot]:
        return {worker: snap for worker, snap in self.answers.items() if snap is not None}


REQUESTS = ("bastion_gateway_requests_total", (("route", "/api"), ("status", "200")))
COUNT = ("bastion_gateway_request_duration_seconds_count", (("route", "/api"),))
INF = ("bastion_gateway_request_duration_seconds_bucket", (("le", "+Inf"), ("route", "/api")))
SUM = ("bastion_gateway_request_duration_seconds_sum", (("route", "/api"),))


def test_counters_and_histograms_are_summed_and_gauges_follow_their_rule() -> None:
    workers = Workers()
    workers.answers = {
        0: parse_snapshot(100, exposition(3, 0.5, 1, 500.0, 1, 3)),
        1: parse_snapshot(101, exposition(4, 0.25, 0, -20.0, 3, 1)),
    }
    got = samples(MergedMetrics(2, workers))
    assert got[REQUESTS] == 7
    assert got[COUNT] == got[INF] == 7
    assert got[SUM] == 0.75
    assert got[("bastion_feed_up", (("feed", "keys"),))] == 0  # down in one worker: down
    assert got[("bastion_as_signing_key_rotation_seconds", (("alg", "ES256"),))] == -20  # most urgent
    assert got[("bastion_gateway_bans_active", ())] == 2  # the same state in each: not doubled
    assert got[("bastion_gateway_token_cache_hit_ratio", ())] == 0.5  # (1 + 3) / 8, not a mean
    assert (
        got[("bastion_worker_up", (("worker", "0"),))] == got[("bastion_worker_up", (("worker", "1"),))] == 1
    )


def test_a_worker_that_does_not_answer_keeps_its_last_counts() -> None:
    workers = Workers()
    merged = MergedMetrics(2, workers)
    workers.answers = {
        0: parse_snapshot(100, exposition(3, 0.5, 1, 1.0, 1, 1)),
        1: parse_snapshot(101, exposition(4, 0.5, 1, 1.0, 1, 1)),
    }
    assert samples(merged)[REQUESTS] == 7
    workers.answers[1] = None
    got = samples(merged)
    assert got[REQUESTS] == 7
    assert got[("bastion_worker_up", (("worker", "1"),))] == 0


def test_a_restarted_worker_continues_the_totals_instead_of_lowering_them() -> None:
    workers = Workers()
    merged = MergedMetrics(2, workers)
    workers.answers = {
        0: parse_snapshot(100, exposition(30, 3.0, 1, 1.0, 1, 1)),
        1: parse_snapshot(101, exposition(40, 4.0, 1, 1.0, 1, 1)),
    }
    assert samples(merged)[REQUESTS] == 70
    # Worker 1 was replaced by a new process (pid 102) that has counted 2 requests so far.
    workers.answers[1] = parse_snapshot(102, exposition(2, 0.5, 1, 1.0, 1, 1))
    got = samples(merged)
    assert got[REQUESTS] == 72
    assert got[COUNT] == got[INF] == 72
    assert got[SUM] == 7.5
    workers.answers[1] = parse_snapshot(102, exposition(5, 0.5, 1, 1.0, 1, 1))
    assert samples(merged)[REQUESTS] == 75


def test_created_samples_of_prometheus_client_counters_are_dropped() -> None:
    registry = CollectorRegistry()
    Counter("bastion_feed_drops", "Drops", ["feed"], registry=registry).labels("keys").inc()
    workers = Workers()
    workers.answers = {0: parse_snapshot(1, generate_latest(registry).decode())}
    got = samples(MergedMetrics(1, workers))
    assert got[("bastion_feed_drops_total", (("feed", "keys"),))] == 1
    assert not any(name.endswith("_created") for name, _ in got)


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram()
    for seconds in (0.0001, 0.003, 0.003, 20.0):
        histogram.observe(seconds)
    family = histogram_family("h", "doc", ["route"], {("/a",): histogram})
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "h_bucket"}
    assert buckets["0.0005"] == 1
    assert buckets["0.0025"] == 1
    assert buckets["0.005"] == 3
    assert buckets["10.0"] == 3
    assert buckets["+Inf"] == 4


def test_a_key_is_held_only_when_every_worker_holds_it() -> None:
    from bastion.ops.aggregate import held_keys
    from bastion.ops.aggregate import keys_document

    def exposition(*kids: str) -> str:
        lines = ["# TYPE bastion_gateway_jwks_cached_key gauge"]
        lines += [f'bastion_gateway_jwks_cached_key{{issuer="https://as",kid="{kid}"}} 1.0' for kid in kids]
        return "\n".join(lines) + "\n"

    both = [parse_snapshot(1, exposition("k1", "k2")), parse_snapshot(2, exposition("k1"))]
    assert held_keys(both) == {"https://as": frozenset({"k1"})}  # worker 2 has not fetched k2 yet
    assert held_keys([parse_snapshot(1, exposition("k1", "k2"))]) == {"https://as": frozenset({"k1", "k2"})}
    assert held_keys([]) == {}
    assert keys_document({"https://as": {"k2", "k1"}}) == b'{"issuers":{"https://as":{"kids":["k1","k2"]}}}'
