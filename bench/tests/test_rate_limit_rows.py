"""The gateway suite's rate-limit rows: their configuration, the checks that a limit was consulted,
per-round ratios, row selection, and the private Redis they read buckets back from."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import peers
import pytest
from bastion_gateway import GatewayService
from bastion_gateway import gateway_config
from gateway_suite import NEVER_REFUSING
from gateway_suite import RATE_LIMIT_ROWS
from gateway_suite import GatewayOptions
from gateway_suite import RateLimitRow
from gateway_suite import RedisBuckets
from gateway_suite import check_limit_counts
from gateway_suite import cpu_per_request
from gateway_suite import round_ratios
from procs import free_port
from rounds import Target
from wrk import WrkResult

from bastion.cli.config import load_settings
from bastion.ratelimit.gcra import Rate

LIMITED = RateLimitRow("rl-local-ip", "in-process", "memory", "ip", "rl-off")
UNLIMITED = RateLimitRow("rl-off", "none", "memory", None, None)
BY_CLIENT = RateLimitRow("rl-redis-client", "redis", "redis", "client", "rl-off-redis", 10)


def config_file(tmp_path: Path, **kwargs: object) -> Path:
    path = tmp_path / "bastion.toml"
    path.write_text(
        gateway_config(
            data_dir=tmp_path / "data",
            port=8000,
            admin_port=9000,
            alg="RS256",
            jwks_uri="http://127.0.0.1:1/jwks.json",
            upstream_port=7000,
            cache=True,
            **kwargs,  # type: ignore[arg-type]
        )
    )
    return path


def test_config_sets_the_state_store_and_the_route_limit(tmp_path: Path) -> None:
    path = config_file(
        tmp_path, state_url="redis://127.0.0.1:6390/3", rate_limit=[{**NEVER_REFUSING, "key": "client"}]
    )
    settings, _ = load_settings(str(path), environ={})
    assert settings.resolved_state_url() == "redis://127.0.0.1:6390/3"
    assert settings.gateway is not None
    route = settings.gateway.routes[0]
    assert route.rate_limit is not None
    (limit,) = route.rate_limit.limits
    assert (limit.requests, limit.per, limit.burst, limit.key) == (100, 1, 1_000_000_000, "client")


def test_config_without_limits_names_an_empty_list_and_keeps_the_default_state(tmp_path: Path) -> None:
    settings, _ = load_settings(str(config_file(tmp_path, rate_limit=[])), environ={})
    assert settings.gateway is not None
    assert settings.gateway.routes[0].rate_limit is not None
    assert settings.gateway.routes[0].rate_limit.limits == ()
    assert settings.resolved_state_url().startswith("sqlite:///")
    plain, _ = load_settings(str(config_file(tmp_path)), environ={})
    assert plain.gateway is not None
    assert plain.gateway.routes[0].rate_limit is None


def test_the_limit_never_refuses_a_run_yet_runs_ahead_of_the_clock() -> None:
    rate = Rate(NEVER_REFUSING["requests"], float(NEVER_REFUSING["per"]), NEVER_REFUSING["burst"])
    # 10 ms per request: at thousands per second the bucket's tat runs ahead (a Redis key lives on)
    assert rate.interval == 10_000
    # and it refuses only once it is 10^7 s ahead: a million requests leave it far from that
    assert 1_000_000 * rate.interval < rate.tolerance


def test_every_limited_row_has_a_measured_unlimited_baseline_on_its_store() -> None:
    by_variant = {row.variant: row for row in RATE_LIMIT_ROWS}
    for row in RATE_LIMIT_ROWS:
        if row.key is None:
            assert row.baseline is None
            continue
        assert row.baseline is not None
        base = by_variant.get(row.baseline)
        if base is not None:  # "cache": the suite's cache-on row, on the default SQLite state
            assert (base.state, base.key) == (row.state, None)
        else:
            assert (row.baseline, row.state) == ("cache", "sqlite")


def test_counts_that_show_the_limit_consulted_pass() -> None:
    assert check_limit_counts(LIMITED, 1000, 1300, 0, 0, None) == []
    assert check_limit_counts(UNLIMITED, 1000, 0, 0, 0, None) == []
    assert check_limit_counts(BY_CLIENT, 1000, 1000, 0, 0, [(10, 5_000), (10, 9_000)]) == []


def test_counts_that_contradict_the_row_are_reported() -> None:
    assert check_limit_counts(LIMITED, 1000, 0, 0, 0, None) == ["only 0 requests counted for 1,000 measured"]
    assert check_limit_counts(UNLIMITED, 1000, 5, 0, 0, None) == [
        "5 requests counted by a limit on a route without one"
    ]
    assert check_limit_counts(LIMITED, 1000, 2000, 3, 0, None) == ["3 refused and 0 undecided"]
    assert check_limit_counts(LIMITED, 1000, 2000, 0, 44, None) == ["0 refused and 44 undecided"]
    assert check_limit_counts(BY_CLIENT, 1000, 1000, 0, 0, [(10, 5_000), (0, 0)]) == [
        "round 2: 0 Redis buckets (expected 10), shortest PTTL 0 ms"
    ]
    assert check_limit_counts(BY_CLIENT, 1000, 1000, 0, 0, [(10, -2)]) == [
        "round 1: 10 Redis buckets (expected 10), shortest PTTL -2 ms"
    ]


def wrk(rps: float) -> WrkResult:
    return WrkResult(int(rps * 10), 10.0, 1.0, 1.0, 2.0, 2.0, 0, 0)


def test_round_ratios_pair_the_rounds_of_row_and_baseline() -> None:
    base = Target("b", "b", None, "http://x/", "get.lua", results=[wrk(1000), wrk(2000), wrk(0)])
    row = Target("r", "r", None, "http://x/", "get.lua", results=[wrk(950), wrk(1000), wrk(10)])
    assert round_ratios(row, base) == [0.95, 0.5]


def test_cpu_per_request_is_the_server_share_over_the_requests() -> None:
    target = Target(
        "r", "r", None, "http://x/", "get.lua", results=[wrk(1000), wrk(0)], server_cpu=[0.9, 0.5]
    )
    # 90 % of a core for 10 s over 10,000 requests: 900 µs each
    assert cpu_per_request(target) == [pytest.approx(900.0)]


def test_rows_are_selected_by_key_prefix() -> None:
    assert GatewayOptions().wanted("haproxy-rs256")
    options = GatewayOptions(rows=("bastion-rl", "bastion-cache-rs256"))
    assert options.wanted("bastion-rl-redis-ip-rs256")
    assert options.wanted("bastion-cache-rs256")
    assert not options.wanted("bastion-cache-es256")
    assert not options.wanted("haproxy-rs256")


@pytest.fixture
def metrics_server() -> Iterator[tuple[int, list[str]]]:
    pages: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages[0].encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], pages
    finally:
        server.shutdown()
        server.server_close()


def test_metric_sum_adds_every_label_set_and_reads_absent_as_zero(
    metrics_server: tuple[int, list[str]], tmp_path: Path
) -> None:
    port, pages = metrics_server
    pages.append(
        "# HELP bastion_gateway_rate_limit_errors_total x\n"
        'bastion_gateway_rate_limit_errors_total{on_error="closed",route="/"} 3.0\n'
        'bastion_gateway_rate_limit_errors_total{on_error="open",route="/a"} 4.0\n'
        "bastion_gateway_rate_limit_admitted_total 1.234e+06\n"
        "bastion_gateway_rate_limit_admitted_created 1.7e+09\n"
    )
    service = GatewayService(
        "g", ["true"], cores=None, port=free_port(), log_dir=tmp_path, admin_port=port, workers=1
    )
    assert service.metric_sum("bastion_gateway_rate_limit_errors_total") == 7
    assert service.metric_sum("bastion_gateway_rate_limit_admitted_total") == 1_234_000
    assert service.metric_sum("bastion_gateway_rate_limited_total") == 0


@pytest.mark.slow
@pytest.mark.skipif(
    not shutil.which("redis-server", path="/usr/bin:/usr/sbin:/usr/local/bin"),
    reason="redis-server comes from `bench/run.py` installing Debian packages",
)
def test_private_redis_buckets_are_read_back_per_database(tmp_path: Path) -> None:
    import redis

    port = free_port()
    with peers.redis_server(port, tmp_path, None):
        buckets = RedisBuckets(f"redis://127.0.0.1:{port}/2")
        assert buckets.read() == (0, 0)
        client = redis.Redis.from_url(buckets.url)
        other = redis.Redis.from_url(f"redis://127.0.0.1:{port}/3")
        try:
            client.set("bastion:rl:{a}:0:100/1000000/1", 1, px=60_000)
            client.set("bastion:rl:{b}:0:100/1000000/1", 1, px=30_000)
            client.set("bastion:revocations", 1)  # not a bucket
            other.set("bastion:rl:{c}:0:100/1000000/1", 1, px=60_000)  # another row's database
            buckets.after_round()
        finally:
            client.close()
            other.close()
        (count, ttl), *_ = buckets.rounds
        assert count == 2
        assert 25_000 < ttl <= 30_000
