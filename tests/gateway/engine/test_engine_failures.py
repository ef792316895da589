"""Upstream failures: 502/503/504 as problem+json, retries, stale pooled connections, health."""

from __future__ import annotations

import asyncio
import socket

import pytest

from .servers import RawClient
from .servers import Upstream

GET = b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_problem(reply, status: int) -> None:
    assert reply.status == status
    assert reply.header(b"content-type") == b"application/problem+json"
    data = reply.json()
    assert data["type"] == "about:blank"
    assert data["status"] == status
    assert set(data) == {"type", "title", "status", "detail"}
    # Topology stays hidden: no address or port in the body.
    assert b"127.0.0.1" not in reply.body
    assert b"localhost" not in reply.body


@pytest.mark.anyio
async def test_upstream_down_is_502(gateway_for) -> None:
    dead = f"127.0.0.1:{free_port()}"
    gateway, handler = await gateway_for([dead])
    client = await RawClient.connect(gateway.port)
    reply = await client.request(GET)
    assert_problem(reply, 502)
    assert str(free_port) not in reply.body.decode()
    assert handler.outcomes[0].error == "upstream_connect"
    # A bodyless request failed cleanly: the client connection stays open.
    assert_problem(await client.request(GET), 502)
    await client.aclose()


@pytest.mark.anyio
async def test_read_timeout_is_504(upstream: Upstream, gateway_for) -> None:
    gateway, handler = await gateway_for([upstream.address], read_timeout=0.2)
    client = await RawClient.connect(gateway.port)
    reply = await client.request(b"GET /sleep/3 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert_problem(reply, 504)
    assert handler.outcomes[0].error == "upstream_timeout"
    await client.aclose()


@pytest.mark.anyio
async def test_total_timeout_is_504(upstream: Upstream, gateway_for) -> None:
    gateway, _ = await gateway_for([upstream.address], total_timeout=0.2, read_timeout=10)
    client = await RawClient.connect(gateway.port)
    assert_problem(await client.request(b"GET /sleep/3 HTTP/1.1\r\nHost: a\r\n\r\n"), 504)
    await client.aclose()


@pytest.mark.anyio
async def test_timeout_after_the_response_started_cuts_the_connection(
    upstream: Upstream, gateway_for
) -> None:
    gateway, handler = await gateway_for([upstream.address], read_timeout=0.2)
    client = await RawClient.connect(gateway.port)
    await client.send(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers = await client.read_head()
    assert status == 200
    assert dict(headers)[b"content-length"] == b"100"
    # The client sees a short body and the connection dropped: never a silent truncation.
    assert await client.reader.read() == b"partial"
    await client.aclose()
    assert handler.outcomes[0].error == "upstream_timeout"


@pytest.mark.anyio
async def test_connect_timeout_is_504(gateway_for) -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, connect hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    await asyncio.sleep(0.05)
    try:
        gateway, handler = await gateway_for([f"127.0.0.1:{port}"], connect_timeout=0.2)
        client = await RawClient.connect(gateway.port)
        assert_problem(await client.request(GET), 504)
        assert handler.outcomes[0].error == "upstream_timeout"
        await client.aclose()
    finally:
        for s in fillers:
            s.close()
        listener.close()


@pytest.mark.anyio
async def test_circuit_breaker_opens_then_probes(upstream: Upstream, gateway_for) -> None:
    port = free_port()
    gateway, handler = await gateway_for(
        [f"127.0.0.1:{port}"],
        group_options={"breaker_failures": 2, "breaker_open_seconds": 0.3, "failure_threshold": 100},
    )
    client = await RawClient.connect(gateway.port)
    assert_problem(await client.request(GET), 502)
    assert_problem(await client.request(GET), 502)
    assert_problem(await client.request(GET), 503)
    assert handler.outcomes[-1].error == "circuit_open"
    # After the open period one probe goes through; the target is back, the breaker closes.
    revived = Upstream()
    await revived.start(port)
    try:
        await asyncio.sleep(0.35)
        assert (await client.request(GET)).status == 200
        assert (await client.request(GET)).status == 200
    finally:
        await revived.stop()
    await client.aclose()


@pytest.mark.anyio
async def test_passive_health_marks_a_target_down(gateway_for) -> None:
    gateway, handler = await gateway_for(
        [f"127.0.0.1:{free_port()}"],
        group_options={"failure_threshold": 1, "cool_off": 30, "breaker_failures": 0},
    )
    client = await RawClient.connect(gateway.port)
    assert_problem(await client.request(GET), 502)
    assert_problem(await client.request(GET), 503)
    assert handler.outcomes[-1].error == "no_healthy_target"
    await client.aclose()


@pytest.mark.anyio
async def test_retry_on_another_target(upstream: Upstream, gateway_for) -> None:
    dead = f"127.0.0.1:{free_port()}"
    gateway, handler = await gateway_for(
        [dead, upstream.address], retry=True, group_options={"failure_threshold": 100, "breaker_failures": 0}
    )
    client = await RawClient.connect(gateway.port)
    for _ in range(4):  # round-robin hits the dead target every other time
        assert (await client.request(GET)).status == 200
    assert all(o.upstream == upstream.address for o in handler.outcomes)
    await client.aclose()


@pytest.mark.anyio
async def test_no_retry_on_another_target_unless_allowed(upstream: Upstream, gateway_for) -> None:
    dead = f"127.0.0.1:{free_port()}"
    gateway, _ = await gateway_for([dead, upstream.address], group_options={"failure_threshold": 100})
    client = await RawClient.connect(gateway.port)
    statuses = sorted([(await client.request(GET)).status for _ in range(2)])
    assert statuses == [200, 502]
    await client.aclose()


@pytest.mark.anyio
async def test_round_robin_over_targets(gateway_for) -> None:
    ups = [Upstream(), Upstream()]
    for u in ups:
        await u.start()
    try:
        gateway, _ = await gateway_for([u.address for u in ups])
        client = await RawClient.connect(gateway.port)
        for _ in range(4):
            await client.request(GET)
        assert [len(u.seen) for u in ups] == [2, 2]
        await client.aclose()
    finally:
        for u in ups:
            await u.stop()


@pytest.mark.anyio
async def test_stale_pooled_connection_is_retried_once_for_idempotent_methods(
    upstream: Upstream, gateway_for
) -> None:
    gateway, handler = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    assert (await client.request(GET)).status == 200
    # From now on the upstream drops any connection's second request unanswered: the pooled
    # connection looks alive but is dead to new requests, as after an upstream restart.
    upstream.drop_second_request = True
    reply = await client.request(GET)
    assert reply.status == 200
    assert reply.json()["connection"] == 2
    assert upstream.connections == 2
    assert handler.outcomes[-1].error is None
    await client.aclose()


@pytest.mark.anyio
async def test_stale_pooled_connection_is_not_retried_for_post(upstream: Upstream, gateway_for) -> None:
    gateway, handler = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    assert (await client.request(GET)).status == 200
    upstream.drop_second_request = True
    assert_problem(await client.request(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"), 502)
    assert handler.outcomes[-1].error == "upstream_closed"
    await client.aclose()


@pytest.mark.anyio
async def test_upstream_restart_closes_are_detected_in_the_pool(gateway_for) -> None:
    first = Upstream()
    await first.start()
    port = first.port
    gateway, _ = await gateway_for([first.address])
    client = await RawClient.connect(gateway.port)
    assert (await client.request(GET)).status == 200
    await first.stop()
    second = Upstream()
    await second.start(port)
    try:
        await asyncio.sleep(0.05)
        # Closed before writing: safe for any method.
        reply = await client.request(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        assert reply.status == 200
        assert reply.json()["body_len"] == 2
    finally:
        await second.stop()
    await client.aclose()


@pytest.mark.anyio
async def test_upstream_early_answer_closes_the_client_connection(upstream: Upstream, gateway_for) -> None:
    gateway, _ = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    await client.send(b"POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    reply = await client.read_response()
    assert reply.status == 413
    assert reply.header(b"connection") == b"close"
    await client.aclose()


@pytest.mark.anyio
async def test_active_health_checks(upstream: Upstream, gateway_for) -> None:
    gateway, handler = await gateway_for(
        [upstream.address], group_options={"health_check_path": "/health", "health_check_interval": 60}
    )
    group = handler.group
    group.start()
    client = await RawClient.connect(gateway.port)
    upstream.healthy = False
    await group.check_health()
    assert_problem(await client.request(GET), 503)
    upstream.healthy = True
    await group.check_health()
    assert (await client.request(GET)).status == 200
    await client.aclose()


@pytest.mark.anyio
async def test_active_health_loop_starts_with_the_first_request(upstream: Upstream, gateway_for) -> None:
    upstream.healthy = False
    gateway, handler = await gateway_for(
        [upstream.address], group_options={"health_check_path": "/health", "health_check_interval": 0.05}
    )
    client = await RawClient.connect(gateway.port)
    # Nobody called start(): the first request starts the checks.
    await client.request(GET)
    for _ in range(100):
        if not handler.group.targets[0].active_healthy:
            break
        await asyncio.sleep(0.02)
    assert not handler.group.targets[0].active_healthy
    assert any(s.target == "/health" for s in upstream.seen)
    await client.aclose()


@pytest.mark.anyio
async def test_max_per_target_queues_requests_on_one_connection(upstream: Upstream, gateway_for) -> None:
    gateway, _ = await gateway_for([upstream.address], group_options={"max_per_target": 1})
    clients = [await RawClient.connect(gateway.port) for _ in range(3)]
    replies = await asyncio.gather(
        *(c.request(b"GET /sleep/0.05 HTTP/1.1\r\nHost: a\r\n\r\n") for c in clients)
    )
    assert [r.status for r in replies] == [200, 200, 200]
    assert upstream.connections == 1
    for c in clients:
        await c.aclose()


@pytest.mark.anyio
async def test_busy_pool_past_the_connect_timeout_is_503(upstream: Upstream, gateway_for) -> None:
    gateway, handler = await gateway_for(
        [upstream.address], connect_timeout=0.1, group_options={"max_per_target": 1}
    )
    slow = await RawClient.connect(gateway.port)
    await slow.send(b"GET /sleep/0.4 HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.05)
    other = await RawClient.connect(gateway.port)
    assert_problem(await other.request(GET), 503)
    assert (await slow.read_response()).status == 200
    assert "upstream_busy" in [o.error for o in handler.outcomes]
    await slow.aclose()
    await other.aclose()


@pytest.mark.anyio
async def test_half_closed_client_still_gets_its_response(upstream: Upstream, gateway_for) -> None:
    gateway, _ = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    await client.send(b"GET /sleep/0.05 HTTP/1.1\r\nHost: a\r\n\r\n")
    client.writer.write_eof()
    reply = await client.read_response()
    assert reply.body == b"slept"
    assert await client.closed()
    await client.aclose()
