"""Rate limits as users run them: real ``bastion serve`` processes driven concurrently.

* the embedded default (SQLite state file) with ``--workers 2``: a limit holds for the whole
  server, not per worker;
* two gateway processes sharing a real Redis: they admit ``burst + rate × t`` within 1 % over a
  few seconds of concurrent load, and never more than that in any window.
"""

from __future__ import annotations

import http.client
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import service_url
from tests.e2e.gw_stack import ROUTES
from tests.e2e.gw_stack import GatewayStack
from tests.e2e.harness import free_port

#: Every request comes from 127.0.0.1: thousands of 429s would earn it an automatic ban (tested
#: in test_bans_serve), and the 403s after it would hide what the limiter decided.
NO_BANS = "[gateway.bans]\nenabled = false\n"


def limited_route(prefix: str, requests: int, per: float) -> str:
    return (
        ROUTES
        + f"""
[[gateway.routes]]
prefix = "{prefix}"
upstream = "app"
auth = "none"
rate_limit = {{ limits = [{{ requests = {requests}, per = {per}, key = "route" }}] }}
"""
    )


def drive(port: int, path: str, until: float, out: list[tuple[float, int]], lock: threading.Lock) -> None:
    """Send requests until ``until``, a connection each (so the kernel spreads them over the
    workers); record (answered at, status)."""
    seen: list[tuple[float, int]] = []
    try:
        while time.monotonic() < until:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", path, headers={"Connection": "close"})
                response = conn.getresponse()
                response.read()
            finally:
                conn.close()
            seen.append((time.monotonic(), response.status))
    finally:
        with lock:
            out.extend(seen)


def hammer(
    ports: list[int], path: str, seconds: float, threads: int
) -> tuple[float, float, list[tuple[float, int]]]:
    results: list[tuple[float, int]] = []
    lock = threading.Lock()
    start = time.monotonic()
    until = start + seconds
    workers = [
        threading.Thread(target=drive, args=(ports[n % len(ports)], path, until, results, lock))
        for n in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return start, time.monotonic(), results


def requests_counted(admin_port: int, prefix: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("bastion_gateway_requests_total") and f'route="{prefix}"' in line
    )


@pytest.fixture
def stacks() -> Iterator[list[GatewayStack]]:
    started: list[GatewayStack] = []
    yield started
    for stack in started:
        stack.terminate()
    for stack in started:
        stack.wait()


def test_a_limit_holds_for_the_whole_server_with_two_workers_on_the_embedded_default(
    tmp_path: Path, stacks: list[GatewayStack]
) -> None:
    admin = free_port()
    stack = GatewayStack(
        tmp_path / "stack",
        serve_args=("--workers", "2"),
        admin_port=admin,
        routes=limited_route("/limited", 100, 3600),
        bans=NO_BANS,
    )
    stacks.append(stack)
    _, _, results = hammer([stack.gateway_port], "/limited", 1.5, threads=16)
    statuses = [status for _, status in results]
    assert statuses.count(200) == 100
    assert statuses.count(429) == len(results) - 100
    # The server's one metrics listener counts every answer of both workers once.
    assert requests_counted(admin, "/limited") == len(results)
    assert len(stack.upstream.records()) == 100 + 1  # and the readiness probe


def test_two_gateways_sharing_redis_admit_the_configured_count_within_one_percent(
    tmp_path: Path, stacks: list[GatewayStack]
) -> None:
    url = service_url("redis")
    prefix = f"/limited-{secrets.token_hex(4)}"  # its own buckets on the shared Redis
    routes = limited_route(prefix, 50, 1) + f'\n[storage]\nstate_url = "{url}"\n'
    for name in ("one", "two"):
        stacks.append(GatewayStack(tmp_path / name, routes=routes, bans=NO_BANS))
    ports = [stack.gateway_port for stack in stacks]
    burst, rate = 50, 50.0
    start, end, results = hammer(ports, prefix, 4.0, threads=12)
    admitted = sorted(at for at, status in results if status == 200)
    refused = sum(1 for _, status in results if status == 429)
    assert len(admitted) + refused == len(results)
    assert refused > len(admitted)  # offered well above the rate
    # At most what the whole run allows; at least 99 % of what the span between the first and
    # the last answer allows (the decisions happened within a few ms of those answers).
    assert len(admitted) <= burst + rate * (end - start)
    answered = sorted(at for at, _ in results)
    expected = burst + rate * (answered[-1] - answered[0])
    assert len(admitted) >= 0.99 * expected, (len(admitted), expected)
    # never more than burst + rate × t in any window; answers reach the client up to a few
    # tens of ms after their decision on this loaded machine: 50 ms of slack for that
    for i, first in enumerate(admitted):
        for j in range(i + burst, len(admitted)):
            assert j - i + 1 <= burst + rate * (admitted[j] - first + 0.05)
    # both gateways admitted some: the buckets are shared, not per process
    per_gateway = [len(stack.upstream.records()) - 1 for stack in stacks]
    assert all(count > 0 for count in per_gateway), per_gateway
    assert sum(per_gateway) == len(admitted)
