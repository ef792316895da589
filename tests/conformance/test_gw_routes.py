"""Exact and host routes through the whole gateway, and the confusions they could open.

A protected exact or host route must never be reachable through a public route by a variant of
its path or host that a lenient upstream reads as the same: every such request is refused, and
the recording upstream is what shows it was never forwarded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import bearer
from tests.conformance.gw_attack import running_stack

ROUTES = [
    {"prefix": "/", "upstream": "app", "auth": "none", "read_timeout": 1.0},
    {"prefix": "/api", "upstream": "app", "auth": "none", "read_timeout": 1.0},
    {
        "prefix": "/api/read",
        "match": "exact",
        "upstream": "app",
        "scopes": {"GET": ["reports:read"]},
        "rewrite_prefix": "/exact-read",
        "read_timeout": 1.0,
    },
    {
        "prefix": "/admin",
        "host": "admin.example.com",
        "upstream": "app",
        "scopes": {"*": ["admin"]},
        "rewrite_prefix": "/host-admin",
        "read_timeout": 1.0,
    },
]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack(routes=ROUTES) as running:
        yield running


def req(target: bytes, host: bytes = b"api.example", *headers: bytes) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: " + host, *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def routes_of(stack: Stack) -> list[str]:
    stack.gateway.access_log.flush()
    return [json.loads(line)["route"] for line in stack.log.getvalue().splitlines()]


@pytest.mark.anyio
async def test_an_exact_route_serves_its_path_alone(stack: Stack) -> None:
    token = stack.token(scope="reports:read")
    assert (await stack.send(req(b"/api/read"))).status == 401
    assert (await stack.send(req(b"/api/read?x=1", b"api.example", bearer(token)))).status == 200
    assert (await stack.send(req(b"/api/read/x"))).status == 200  # the public /api prefix
    assert [r.target for r in stack.upstream.requests] == [b"/exact-read?x=1", b"/api/read/x"]
    assert routes_of(stack) == ["=/api/read", "=/api/read", "/api"]


@pytest.mark.anyio
@pytest.mark.parametrize("target", [b"/api/read/", b"/API/READ", b"/api/read.", b"/api/Read/"])
async def test_variants_of_an_exact_path_never_reach_the_public_prefix(stack: Stack, target: bytes) -> None:
    reply = await stack.send(req(target))
    assert reply.status == 400
    assert stack.upstream.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "host",
    [b"admin.example.com", b"ADMIN.Example.Com", b"admin.example.com:8443", b"admin.example.com."],
)
async def test_a_host_route_is_chosen_by_host_whatever_its_case_port_or_trailing_dot(
    stack: Stack, host: bytes
) -> None:
    assert (await stack.send(req(b"/admin/users", host))).status == 401
    token = stack.token(scope="admin")
    reply = await stack.send(req(b"/admin/users", host, bearer(token)))
    assert reply.status == 200
    [received] = stack.upstream.requests
    assert received.target == b"/host-admin/users"
    assert received.header(b"host") == [host]


@pytest.mark.anyio
async def test_other_hosts_use_the_host_less_routes(stack: Stack) -> None:
    reply = await stack.send(req(b"/admin/users", b"www.example.com"))
    assert reply.status == 200
    [received] = stack.upstream.requests
    assert received.target == b"/admin/users"
    assert routes_of(stack) == ["/"]


@pytest.mark.anyio
@pytest.mark.parametrize("target", [b"/ADMIN/users", b"/admin./users", b"/Admin"])
async def test_a_host_route_is_not_reached_through_the_catch_all_by_case_or_dots(
    stack: Stack, target: bytes
) -> None:
    reply = await stack.send(req(target, b"admin.example.com"))
    assert reply.status == 400
    assert stack.upstream.requests == []


@pytest.mark.anyio
async def test_two_host_fields_are_refused_before_routing(stack: Stack) -> None:
    data = b"GET /admin HTTP/1.1\r\nHost: www.example.com\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n"
    reply = await stack.send(data)
    assert reply.status == 400
    assert stack.upstream.requests == []
