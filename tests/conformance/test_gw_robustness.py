"""Robustness: slow and greedy clients, misbehaving upstreams, and what leaks when things fail.

Each attack runs against the whole gateway over loopback and ends with the same two checks: the
gateway answered (or cut) the attacker in bounded time and memory without leaking internals (no
traceback, no upstream address, no upstream ``Server``), and it still serves everyone else.

Sources: slowloris and slow-POST (RSnake, R-U-Dead-Yet), HAProxy's header and buffer limits,
Envoy CVE-2019-18801 and CVE-2022-29225 (unbounded headers and bodies), nginx's
``proxy_buffer_size`` (an upstream's oversized header is a 502), RFC 9110 §15.2 (1xx responses).
"""

from __future__ import annotations

import pytest

from bastion.gateway.http1 import Data
from bastion.gateway.http1 import EndOfMessage
from bastion.gateway.http1 import Response
from bastion.gateway.http1 import ResponseReader
from bastion.gateway.http1 import UpstreamProtocolError
from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import get
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
