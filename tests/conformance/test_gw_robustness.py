"""Robustness: slow and greedy clients, misbehaving upstreams, and what leaks when things fail.

Each attack runs against the whole gateway over loopback and ends with the same two checks: the
gateway answered (or cut) the attacker in bounded time and memory without leaking internals (no
traceback, no upstream address, no upstream ``Server``), and it still serves everyone else.

Sources: slowloris and slow-POST (RSnake, R-U-Dead-Yet), HAProxy's header and buffer limits,
Envoy CVE-2019-18801 and CVE-2022-29225 (unbounded headers and bodies), nginx's
``proxy_buffer_size`` (an upstream's oversized header is a 502), RFC 9110 §15.2 (1xx responses).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from bastion.gateway.http1 import Data
from bastion.gateway.http1 import EndOfMessage
from bastion.gateway.http1 import Response
from bastion.gateway.http1 import ResponseReader
from bastion.gateway.http1 import UpstreamProtocolError
from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import get
from tests.conformance.gw_attack import running_stack
from tests.conformance.gw_attack import stack

__all__ = ["stack"]


def _clean(raw: bytes, stack: Stack) -> None:
    """Nothing internal in what the client got."""
    lowered = raw.lower()
    for secret in (
        b"traceback",
        b"exception",
        b'file "',
        b"internal-db",
        b"gunicorn",
        b"express",
        stack.upstream.address.encode(),
        b":%d" % stack.upstream.port,
    ):
        assert secret not in lowered, (secret, raw[:300])


async def _still_serving(stack: Stack) -> None:
    reply = await stack.send(get(b"/public/alive"))
    assert reply.status == 200


# -- misbehaving upstreams -------------------------------------------------------------------------


def _read(data: bytes | list[bytes], reader: ResponseReader | None = None) -> list[object]:
    reader = reader or ResponseReader()
    reader.start(head_request=False)
    for piece in [data] if isinstance(data, bytes) else data:
        reader.receive_data(piece)
    out = []
    while (event := reader.next_event()) is not None:
        out.append(event)
    return out


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nx-big: "] + [b"a" * 65536] * 16 + [b"\r\n\r\n"], id="one-huge-field"
        ),
        pytest.param([b"HTTP/1.1 200 OK\r\n"] + [b"x-h: 1\r\n" * 4096] * 64, id="endless-fields"),
        pytest.param([b"HTTP/1.1 200 OK\r\nx-big: "] + [b"a" * 4096] * 256, id="endless-value-in-pieces"),
        pytest.param(
            [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;"] + [b"e" * 4096] * 256,
            id="endless-chunk-extension",
        ),
        pytest.param(
            [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: "] + [b"a" * 4096] * 256,
            id="endless-trailer",
        ),
    ],
)
def test_an_upstream_response_head_is_bounded(data: bytes | list[bytes]) -> None:
    with pytest.raises(UpstreamProtocolError):
        _read(data)


def test_ordinary_responses_and_interim_floods_are_read() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"x-h: %s\r\n" % (b"v" * 100) * 200 + b"content-length: 100000\r\n\r\n"
    out = _read([head, b"b" * 100_000])
    assert isinstance(out[0], Response)
    assert sum(len(e.data) for e in out if isinstance(e, Data)) == 100_000
    assert isinstance(out[-1], EndOfMessage)
    # A flood of 1xx responses is skipped, one by one; the final response follows.
    out = _read([b"HTTP/1.1 100 Continue\r\n\r\n" * 50_000, b"HTTP/1.1 204 No Content\r\n\r\n"])
    assert [type(e) for e in out] == [Response, EndOfMessage]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("how", "status"),
    [
        (b"garbage", 502),
        (b"switch", 502),
        (b"bad-length", 502),
        (b"huge-header", 502),
        (b"many-headers", 502),
        (b"header-forever", 502),
        (b"interim-flood", 200),
        (b"interim-forever", 504),
    ],
)
async def test_a_misbehaving_upstream_is_a_clean_5xx(stack: Stack, how: bytes, status: int) -> None:
    raw = await stack.exchange(get(b"/public/misbehave/" + how), timeout=10)
    assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:200]
    assert len(raw) < 4096
    _clean(raw, stack)
    await _still_serving(stack)


@pytest.mark.anyio
async def test_an_upstream_closing_mid_body_never_looks_complete(stack: Stack) -> None:
    raw = await stack.exchange(get(b"/public/misbehave/cut-body"))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-length: 1000" in head
    assert len(body) < 1000  # the client sees the truncation: the connection ends early
    await _still_serving(stack)


@pytest.mark.anyio
async def test_an_extra_response_from_the_upstream_never_reaches_the_next_request(stack: Stack) -> None:
    """Response-queue poisoning: bytes after a complete response belong to no request."""
    client = await stack.client()
    try:
        first = await client.request(get(b"/public/misbehave/smuggle-response", close=False))
        assert (first.status, first.body) == (200, b"ok")
        for _ in range(3):
            reply = await client.request(get(b"/public/next", close=False))
            assert reply.status == 200
            assert b"hijack" not in reply.body
            assert reply.json()["target"] == "/public/next"
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_upstream_errors_keep_their_status_but_not_their_server(stack: Stack) -> None:
    raw = await stack.exchange(get(b"/public/misbehave/internal-error"))
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert b"server: bastion" in raw
    _clean(raw, stack)


@pytest.mark.anyio
async def test_an_unreachable_upstream_is_a_502_without_its_address(stack: Stack) -> None:
    await stack.upstream.stop()
    raw = await stack.exchange(get(b"/public/x"))
    assert raw.startswith((b"HTTP/1.1 502 ", b"HTTP/1.1 503 "))
    _clean(raw, stack)


# -- greedy and slow clients ---------------------------------------------------------------------------

FAST_LIMITS = {"header_timeout": 0.3, "body_timeout": 0.3, "keepalive_timeout": 0.5}


@pytest.fixture
async def quick() -> AsyncIterator[Stack]:
    """The stack with short client timeouts."""
    async with running_stack(limits=FAST_LIMITS) as running:
        yield running


async def _read_all(client: object, timeout: float = 3.0) -> bytes:
    reader = client.reader  # type: ignore[attr-defined]
    with contextlib.suppress(ConnectionError):
        return await asyncio.wait_for(reader.read(), timeout)
    return b""


@pytest.mark.anyio
async def test_slowloris_on_the_header_is_cut_with_408(quick: Stack) -> None:
    client = await quick.client()
    try:
        await client.send(b"GET /public/x HTTP/1.1\r\nHost: api.example\r\n")
        for _ in range(3):  # one field at a time, each well inside any per-read timeout
            await asyncio.sleep(0.1)
            with contextlib.suppress(ConnectionError):
                await client.send(b"X-Slow: 1\r\n")
        raw = await _read_all(client)
    finally:
        await client.aclose()
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert quick.upstream.requests == []
    await _still_serving(quick)


@pytest.mark.anyio
async def test_a_stalled_body_is_cut(quick: Stack) -> None:
    client = await quick.client()
    try:
        await client.send(b"POST /public/x HTTP/1.1\r\nHost: api.example\r\nContent-Length: 100\r\n\r\nabc")
        raw = await _read_all(client)
    finally:
        await client.aclose()
    assert raw == b"" or raw.startswith(b"HTTP/1.1 408 ")
    await _still_serving(quick)


@pytest.mark.anyio
async def test_many_idle_connections_do_not_stop_others_and_are_closed(quick: Stack) -> None:
    idle = [await quick.client() for _ in range(150)]
    half = idle[:75]
    for client in half:  # half of them start a request head and stop
        await client.send(b"GET /public/x HTTP/1.1\r\n")
    try:
        await _still_serving(quick)
        results = await asyncio.gather(*(_read_all(client) for client in idle))
    finally:
        for client in idle:
            await client.aclose()
    assert all(raw == b"" or raw.startswith(b"HTTP/1.1 408 ") for raw in results)
    assert quick.gateway.server is not None
    await _still_serving(quick)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(
            b"GET /public/x HTTP/1.1\r\nHost: api.example\r\n" + b"X-H: 1\r\n" * 10_000 + b"\r\n",
            431,
            id="10k-fields",
        ),
        pytest.param(
            b"GET /public/x HTTP/1.1\r\nHost: api.example\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
            431,
            id="200k-field",
        ),
        pytest.param(
            b"GET /public/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: api.example\r\n\r\n", 414, id="100k-path"
        ),
        pytest.param(
            b"GET /public/x?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: api.example\r\n\r\n",
            414,
            id="100k-query",
        ),
        pytest.param(
            b"GET /public/" + b"a/" * 3000 + b" HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n",
            200,
            id="3000-segments",
        ),
        pytest.param(
            b"POST /public/x HTTP/1.1\r\nHost: api.example\r\nContent-Length: 99999999999\r\n\r\n",
            413,
            id="huge-declared-body",
        ),
    ],
)
async def test_oversized_requests_are_refused_in_bounded_time(stack: Stack, data: bytes, status: int) -> None:
    client = await stack.client()
    try:
        with contextlib.suppress(ConnectionError):
            await client.send(data)
        raw = await _read_all(client)
    finally:
        await client.aclose()
    assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:100]
    _clean(raw, stack)
    await _still_serving(stack)


@pytest.mark.anyio
async def test_a_streamed_body_over_the_limit_is_cut(stack: Stack) -> None:
    client = await stack.client()
    try:
        await client.send(
            b"POST /public/x HTTP/1.1\r\nHost: api.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        answer = asyncio.ensure_future(client.read_response())
        block = b"%x\r\n%s\r\n" % (65536, b"b" * 65536)
        for _ in range(200):  # 13 MB against the 10 MiB default
            if answer.done():
                break
            try:
                await client.send(block)
            except ConnectionError:
                break
        reply = await asyncio.wait_for(answer, 5)
        assert reply.status == 413
    finally:
        await client.aclose()
    await _still_serving(stack)
