"""Content filters per route through the whole gateway: methods, body size, media types, header size.

Every case goes over a real socket to the engine and the policy layer in front of the recording
upstream; what counts is the status and headers the client gets and what the upstream received
(for a cut body: the head and the first chunks, never a complete request).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import bearer
from tests.conformance.gw_attack import request
from tests.conformance.gw_attack import running_stack

ROUTES = [
    {
        "prefix": "/files",
        "upstream": "app",
        "auth": "none",
        "methods": ["GET", "POST"],
        "max_body": 1024,
        "content_types": ["application/json", "text/plain"],
        "max_header_bytes": 2048,
        "read_timeout": 1.0,
    },
    {
        "prefix": "/reports",
        "upstream": "app",
        "methods": ["GET", "POST"],
        "scopes": {"GET": ["reports:read"], "POST": ["reports:write"]},
        "read_timeout": 1.0,
    },
    {"prefix": "/scoped", "upstream": "app", "scopes": {"GET": ["reports:read"]}, "read_timeout": 1.0},
    {"prefix": "/public", "upstream": "app", "auth": "none", "read_timeout": 1.0},
]
JSON = b"Content-Type: application/json"


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack(routes=ROUTES) as running:
        yield running


def post(target: bytes, body: bytes, *headers: bytes) -> bytes:
    return request(b"POST", target, *headers, b"Content-Length: %d" % len(body), body=body)


# -- methods ---------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("method", [b"DELETE", b"PUT", b"OPTIONS", b"PROPFIND"])
async def test_a_method_outside_the_list_is_405_with_allow(stack: Stack, method: bytes) -> None:
    reply = await stack.send(request(method, b"/files/a"), method=method)
    assert reply.status == 405
    assert reply.header(b"allow") == b"GET, HEAD, POST"
    assert reply.header(b"content-type") == b"application/problem+json"
    assert stack.upstream.requests == []


@pytest.mark.anyio
async def test_head_comes_with_get(stack: Stack) -> None:
    reply = await stack.send(request(b"HEAD", b"/files/a"), method=b"HEAD")
    assert reply.status == 200
    [received] = stack.upstream.requests
    assert received.method == b"HEAD"


@pytest.mark.anyio
async def test_the_method_list_and_the_scope_table_give_one_allow(stack: Stack) -> None:
    # Refused before the token is read (the list is public) ...
    anonymous = await stack.send(request(b"DELETE", b"/reports/q3"), method=b"DELETE")
    # ... and with a token holding every scope: the same answer.
    token = stack.token(scope="reports:read reports:write")
    signed = await stack.send(request(b"DELETE", b"/reports/q3", bearer(token)), method=b"DELETE")
    # A route with a scope table alone answers 405 after authentication, with the same rule.
    scoped = await stack.send(request(b"DELETE", b"/scoped/q3", bearer(token)), method=b"DELETE")
    assert (anonymous.status, signed.status, scoped.status) == (405, 405, 405)
    assert anonymous.header(b"allow") == signed.header(b"allow") == b"GET, HEAD, POST"
    assert scoped.header(b"allow") == b"GET, HEAD"
    # A listed method still needs its token.
    assert (await stack.send(request(b"GET", b"/reports/q3"))).status == 401
    assert stack.upstream.requests == []


# -- body size -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_declared_body_over_the_route_limit_is_413_before_forwarding(stack: Stack) -> None:
    reply = await stack.send(post(b"/files/a", b"x" * 1025, JSON))
    assert reply.status == 413
    assert reply.header(b"content-type") == b"application/problem+json"
    assert stack.upstream.raw == []


@pytest.mark.anyio
async def test_a_body_at_the_route_limit_is_forwarded(stack: Stack) -> None:
    reply = await stack.send(post(b"/files/a", b"x" * 1024, JSON))
    assert reply.status == 200
    assert reply.json()["body_len"] == 1024


async def _until(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_a_chunked_body_is_cut_mid_stream_at_the_route_limit(stack: Stack) -> None:
    client = await stack.client()
    try:
        await client.send(
            request(b"POST", b"/files/a", JSON, b"Transfer-Encoding: chunked", close=False)
            + b"200\r\n"
            + b"a" * 512
            + b"\r\n"
            + b"200\r\n"
            + b"b" * 512
            + b"\r\n"
        )
        # The first 1024 bytes (the limit) stream through to the upstream ...
        await _until(lambda: stack.upstream.raw and b"b" * 512 in stack.upstream.all_bytes)
        answer = asyncio.ensure_future(client.read_response(b"POST"))
        # ... and the byte that crosses it ends the request.
        with contextlib.suppress(ConnectionError):
            await client.send(b"1\r\nc\r\n0\r\n\r\n")
        reply = await asyncio.wait_for(answer, 5)
        assert reply.status == 413
        assert reply.header(b"connection") == b"close"
        assert await client.closed()
    finally:
        await client.aclose()
    await _until(lambda: not stack.upstream.writers)
    received = stack.upstream.all_bytes
    assert b"c" not in received.partition(b"\r\n\r\n")[2].replace(b"200\r\n", b"")
    assert not received.endswith(b"0\r\n\r\n")
    assert stack.upstream.requests == []  # never a complete request


@pytest.mark.anyio
async def test_a_chunked_body_within_the_route_limit_is_forwarded(stack: Stack) -> None:
    body = b"400\r\n" + b"z" * 1024 + b"\r\n0\r\n\r\n"
    reply = await stack.send(request(b"POST", b"/files/a", JSON, b"Transfer-Encoding: chunked", body=body))
    assert reply.status == 200
    assert reply.json()["body_len"] == 1024


@pytest.mark.anyio
async def test_the_route_limit_does_not_apply_elsewhere(stack: Stack) -> None:
    reply = await stack.send(post(b"/public/a", b"x" * 5000, JSON))
    assert reply.status == 200
    assert reply.json()["body_len"] == 5000


# -- media types -----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param((b"Content-Type: application/xml",), id="other-type"),
        pytest.param((), id="no-type"),
        pytest.param((b"Content-Type: application/jsonx",), id="longer-type"),
        pytest.param((b"Content-Type: application/json", b"Content-Type: text/html"), id="two-types"),
        pytest.param((b"Content-Type: ",), id="empty-type"),
    ],
)
async def test_a_body_of_another_type_is_415_with_accept(stack: Stack, headers: tuple[bytes, ...]) -> None:
    reply = await stack.send(post(b"/files/a", b"{}", *headers))
    assert reply.status == 415
    assert reply.header(b"accept") == b"application/json, text/plain"
    assert reply.header(b"content-type") == b"application/problem+json"
    assert stack.upstream.requests == []


@pytest.mark.anyio
async def test_a_chunked_body_without_a_type_is_415(stack: Stack) -> None:
    body = b"2\r\n{}\r\n0\r\n\r\n"
    reply = await stack.send(request(b"POST", b"/files/a", b"Transfer-Encoding: chunked", body=body))
    assert reply.status == 415
    assert stack.upstream.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type",
    [b"application/json", b"Application/JSON; charset=utf-8", b"text/plain;charset=us-ascii", b"TEXT/PLAIN "],
)
async def test_the_media_type_is_compared_without_parameters_or_case(
    stack: Stack, content_type: bytes
) -> None:
    reply = await stack.send(post(b"/files/a", b"{}", b"Content-Type: " + content_type))
    assert reply.status == 200


@pytest.mark.anyio
async def test_requests_without_a_body_need_no_type(stack: Stack) -> None:
    assert (await stack.send(request(b"GET", b"/files/a"))).status == 200
    assert (await stack.send(post(b"/files/a", b""))).status == 200
    assert len(stack.upstream.requests) == 2


# -- header size -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_header_block_over_the_route_limit_is_431(stack: Stack) -> None:
    big = b"X-Padding: " + b"p" * 2100
    reply = await stack.send(request(b"GET", b"/files/a", big))
    assert reply.status == 431
    assert reply.header(b"content-type") == b"application/problem+json"
    assert stack.upstream.requests == []
    # The gateway's own limit (32 KiB) is what applies on other routes.
    assert (await stack.send(request(b"GET", b"/public/a", big))).status == 200
