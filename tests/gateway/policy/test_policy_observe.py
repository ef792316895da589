"""Access log batching, metrics export and the admin listener."""

from __future__ import annotations

import io

import aiohttp
import anyio
import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bastion.gateway.observe import AccessLog
from bastion.gateway.observe import AdminServer
from bastion.gateway.observe import GatewayMetrics


class Sink(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)

    def lines(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.getvalue().splitlines()]


def test_access_log_batches_by_line_count() -> None:
    sink = Sink()
    log = AccessLog(sink, flush_lines=3, clock=lambda: 1700000000.5)
    log.write({"status": 200})
    log.write({"status": 404})
    assert sink.writes == 0
    log.write({"status": 401})
    assert sink.writes == 1
    assert sink.lines() == [
        {"time": 1700000000.5, "status": 200},
        {"time": 1700000000.5, "status": 404},
        {"time": 1700000000.5, "status": 401},
    ]
    log.write({"status": 500})
    log.close()
    assert sink.writes == 2
    assert sink.lines()[-1]["status"] == 500
    log.close()
    assert sink.writes == 2


@pytest.mark.anyio
async def test_access_log_flushes_after_the_interval() -> None:
    sink = Sink()
    log = AccessLog(sink, flush_lines=1000, flush_interval=0.02)
    log.write({"path": "/a"})
    log.write({"path": "/b"})
    assert sink.writes == 0
    with anyio.fail_after(2):
        while sink.writes == 0:
            await anyio.sleep(0.01)
    assert [line["path"] for line in sink.lines()] == ["/a", "/b"]
    log.close()


@pytest.mark.anyio
async def test_access_log_can_be_off() -> None:
    """With no sink the log is off: it says so (the hot path then skips building records), and a
    record written anyway is dropped at once — not even timestamped, buffered or scheduled."""
    reads: list[float] = []

    def clock() -> float:
        reads.append(1700000000.5)
        return reads[-1]

    off = AccessLog(None, flush_lines=1, clock=clock)
    assert off.enabled is False
    off.write({"status": 200})
    off.close()
    assert reads == []
    # The same calls on a log that is on read the clock and write the line: the probe works.
    sink = Sink()
    on = AccessLog(sink, flush_lines=1, clock=clock)
    assert on.enabled is True
    on.write({"status": 200})
    on.close()
    assert reads == [1700000000.5]
    assert sink.lines() == [{"time": 1700000000.5, "status": 200}]


def test_access_log_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="flush_lines"):
        AccessLog(Sink(), flush_lines=0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_are_exported_through_the_registry() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.request("/api", 200, 0.003)
    metrics.request("/api", 200, 0.2)
    metrics.request("/api", 401, 0.0004)
    metrics.request("-", 404, 0.0001)
    metrics.auth_failure("expired")
    metrics.auth_failure("expired")
    metrics.upstream_error("catalog", "upstream_connect")
    metrics.refused_path("dot_segment")
    metrics.cache_hits = 3
    metrics.cache_misses = 1
    got = samples(metrics.registry)
    assert got[("bastion_gateway_requests_total", (("route", "/api"), ("status", "200")))] == 2
    assert got[("bastion_gateway_requests_total", (("route", "/api"), ("status", "401")))] == 1
    assert got[("bastion_gateway_requests_total", (("route", "-"), ("status", "404")))] == 1
    hist = "bastion_gateway_request_duration_seconds"
    assert got[(hist + "_count", (("route", "/api"),))] == 3
    assert got[(hist + "_bucket", (("le", "0.0005"), ("route", "/api")))] == 1
    assert got[(hist + "_bucket", (("le", "0.005"), ("route", "/api")))] == 2
    assert got[(hist + "_bucket", (("le", "+Inf"), ("route", "/api")))] == 3
    assert got[(hist + "_sum", (("route", "/api"),))] == pytest.approx(0.2034)
    assert got[("bastion_gateway_auth_failures_total", (("reason", "expired"),))] == 2
    key = ("bastion_gateway_upstream_errors_total", (("reason", "upstream_connect"), ("upstream", "catalog")))
    assert got[key] == 1
    assert got[("bastion_gateway_path_refused_total", (("reason", "dot_segment"),))] == 1
    assert got[("bastion_gateway_token_cache_total", (("result", "hit"),))] == 3
    assert got[("bastion_gateway_token_cache_hit_ratio", ())] == 0.75


@pytest.mark.anyio
async def test_admin_server_serves_metrics_and_health() -> None:
    metrics = GatewayMetrics()
    metrics.request("/x", 200, 0.01)
    healthy = True
    admin = AdminServer(metrics.registry, healthy=lambda: healthy)
    await admin.start("127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{admin.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/metrics") as response:
                assert response.status == 200
                assert response.headers["content-type"].startswith("text/plain")
                assert 'bastion_gateway_requests_total{route="/x",status="200"} 1.0' in await response.text()
            async with session.get(base + "/healthz") as response:
                assert response.status == 200
            healthy = False
            async with session.get(base + "/healthz") as response:
                assert response.status == 503
            async with session.get(base + "/other") as response:
                assert response.status == 404
    finally:
        await admin.close()
