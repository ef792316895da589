"""Scopes per method through the whole gateway: HEAD is GET, and what the table omits is refused.

A route's ``scopes`` table used to be consulted only for the methods it named: with
``{ GET = ["reports:read"] }`` a token without ``reports:read`` was forwarded on HEAD, POST,
OPTIONS, PROPFIND or PURGE. Every case goes over a real socket to the gateway in front of the
recording upstream, and the assertion that matters is what that upstream received.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import bearer
from tests.conformance.gw_attack import request
from tests.conformance.gw_attack import running_stack

ROUTES = [
    {"prefix": "/reports", "upstream": "app", "scopes": {"GET": ["reports:read"]}, "read_timeout": 1.0},
    {"prefix": "/open", "upstream": "app", "read_timeout": 1.0},
    {"prefix": "/public", "upstream": "app", "auth": "none", "read_timeout": 1.0},
]
READ_CHALLENGE = (
    b'Bearer realm="shop", error="insufficient_scope", '
    b'error_description="The access token lacks a required scope", scope="reports:read"'
)
UNCOVERED = [b"POST", b"OPTIONS", b"PROPFIND", b"PURGE"]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack(routes=ROUTES) as running:
        yield running


@pytest.mark.anyio
async def test_head_without_the_get_scope_is_403(stack: Stack) -> None:
    token = stack.token(scope="catalog:read")
    reply = await stack.send(request(b"HEAD", b"/reports/q3", bearer(token)), method=b"HEAD")
    assert reply.status == 403
    assert reply.header(b"www-authenticate") == READ_CHALLENGE
    assert stack.upstream.requests == []


@pytest.mark.anyio
async def test_head_with_the_get_scope_is_forwarded(stack: Stack) -> None:
    token = stack.token(scope="reports:read")
    reply = await stack.send(request(b"HEAD", b"/reports/q3", bearer(token)), method=b"HEAD")
    assert reply.status == 200
    [received] = stack.upstream.requests
    assert (received.method, received.target) == (b"HEAD", b"/reports/q3")


@pytest.mark.anyio
@pytest.mark.parametrize("method", UNCOVERED)
@pytest.mark.parametrize("scope", ["catalog:read", "reports:read"])
async def test_methods_the_table_does_not_cover_are_405_and_never_forwarded(
    stack: Stack, method: bytes, scope: str
) -> None:
    body = b"{}" if method in (b"POST", b"PROPFIND") else b""
    lines = [bearer(stack.token(scope=scope)), b"Content-Length: %d" % len(body)]
    reply = await stack.send(request(method, b"/reports/q3", *lines, body=body))
    assert reply.status == 405
    assert reply.header(b"allow") == b"GET, HEAD"
    assert reply.header(b"www-authenticate") is None
    assert orjson.loads(reply.body)["status"] == 405
    assert stack.upstream.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize("method", UNCOVERED)
async def test_without_a_token_the_answer_is_still_401(stack: Stack, method: bytes) -> None:
    reply = await stack.send(request(method, b"/reports/q3"))
    assert reply.status == 401
    assert reply.header(b"www-authenticate") == b'Bearer realm="shop"'
    assert reply.header(b"allow") is None
    assert stack.upstream.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize("method", [b"HEAD", *UNCOVERED])
async def test_routes_without_a_table_are_unchanged(stack: Stack, method: bytes) -> None:
    token = stack.token(scope="")
    reply = await stack.send(request(method, b"/open/x", bearer(token)), method=method)
    assert reply.status == 200
    reply = await stack.send(request(method, b"/public/x"), method=method)
    assert reply.status == 200
    assert [r.method for r in stack.upstream.requests] == [method, method]
