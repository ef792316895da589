"""Forwarding through the engine against a real upstream on loopback."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from bastion.gateway.contract import Forward
from bastion.gateway.contract import RequestHead
from bastion.gateway.limits import EngineLimits
from bastion.gateway.server import GatewayServer
from bastion.gateway.upstream import UpstreamGroup

from .servers import RawClient
from .servers import Upstream

GET_ECHO = b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.anyio
async def test_forward_get_and_keep_alive(upstream: Upstream, gateway_for) -> None:
    gateway, handler = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    for i in range(3):
        reply = await client.request(b"GET /echo?i=%d HTTP/1.1\r\nHost: api.example\r\n\r\n" % i)
        assert reply.status == 200
        data = reply.json()
        assert data["target"] == f"/echo?i={i}"
        assert ["host", "api.example"] in data["headers"]
    # One client connection, one pooled upstream connection for all three requests.
    assert upstream.connections == 1
    assert [o.status for o in handler.outcomes] == [200, 200, 200]
    assert all(o.error is None and o.upstream == upstream.address for o in handler.outcomes)
    await client.aclose()


@pytest.mark.anyio
async def test_content_length_body_is_streamed_upstream(upstream: Upstream, gateway_for) -> None:
    gateway, _ = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    body = bytes(range(256)) * 4096  # 1 MiB
    reply = await client.request(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    data = reply.json()
    assert data["body_len"] == len(body)
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert not data["chunked"]
    assert ["content-length", str(len(body))] in data["headers"]
    await client.aclose()


@pytest.mark.anyio
async def test_chunked_body_stays_chunked(upstream: Upstream, gateway_for) -> None:
    gateway, _ = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    pieces = [b"x" * 1000, b"y" * 70000, b"z"]
    for piece in pieces:
        await client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    await client.send(b"0\r\nX-Trailer: dropped\r\n\r\n")
    data = (await client.read_response()).json()
    whole = b"".join(pieces)
    assert data["chunked"]
    assert data["body_len"] == len(whole)
    assert data["body_sha256"] == hashlib.sha256(whole).hexdigest()
    assert not any(name in ("content-length", "x-trailer") for name, _ in data["headers"])
    await client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "framing"),
    [
        ("/bytes/300000", b"content-length"),
        ("/chunked/300000", b"transfer-encoding"),
        ("/close/300000", b"transfer-encoding"),
    ],
)
async def test_response_framings_for_http11(
    upstream: Upstream, gateway_for, path: str, framing: bytes
) -> None:
    gateway, _ = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    for _ in range(2):  # the client connection stays usable, whatever the upstream framing
        reply = await client.request(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
        assert reply.status == 200
        assert len(reply.body) == 300000
        assert reply.header(framing) is not None
        assert reply.header(b"connection") is None
        assert reply.header(b"trailer") is None
    await client.aclose()


@pytest.mark.anyio
async def test_close_delimited_for_http10_client(upstream: Upstream, gateway_for) -> None:
    gateway, _ = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    reply = await client.request(b"GET /close/5000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert reply.status == 200
    assert len(reply.body) == 5000
    assert reply.header(b"connection") == b"close"
    assert reply.header(b"transfer-encoding") is None
    await client.aclose()


@pytest.mark.anyio
async def test_http10_keep_alive_only_when_asked(upstream: Upstream, gateway_for) -> None:
    gateway, _ = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    reply = await client.request(b"GET /bytes/10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert reply.header(b"connection") == b"keep-alive"
    reply = await client.request(b"GET /bytes/10 HTTP/1.0\r\n\r\n")
    assert reply.header(b"connection") == b"close"
    assert len(reply.body) == 10
    assert await client.closed()
    await client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [(b"HEAD", b"/bytes/1000", 200), (b"GET", b"/status/204", 204), (b"GET", b"/status/304", 304)],
)
async def test_no_body_responses_keep_the_client_connection(
    upstream: Upstream, gateway_for, method: bytes, path: bytes, status: int
) -> None:
    gateway, _ = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    reply = await client.request(method + b" " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n", method)
    assert reply.status == status
    if method == b"HEAD":
        assert reply.header(b"content-length") == b"1000"
    assert reply.header(b"transfer-encoding") is None
    # The client connection goes on working. The upstream one does after a 204 or 304 that
    # announces no content; after a HEAD it is closed, since a non-compliant upstream may still
    # send the body its Content-Length announces (see test_engine_pool_poisoning.py).
    reply = await client.request(b"GET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.body == b"bbb"
    assert upstream.connections == (2 if method == b"HEAD" else 1)
    await client.aclose()


@pytest.mark.anyio
async def test_pipelined_requests_are_answered_in_order(upstream: Upstream, gateway_for) -> None:
    gateway, _ = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    await client.send(
        b"GET /sleep/0.05 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"HEAD /bytes/7 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /bytes/2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert (await client.read_response()).body == b"slept"
    assert (await client.read_response()).json()["body_len"] == 3
    head = await client.read_response(b"HEAD")
    assert head.header(b"content-length") == b"7"
    assert (await client.read_response()).body == b"bb"
    await client.aclose()


@pytest.mark.anyio
async def test_expect_continue_when_forwarding(upstream: Upstream, gateway_for) -> None:
    gateway, _ = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    await client.send(b"PUT /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    interim = await client.reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(b"data")
    reply = await client.read_response()
    assert reply.json()["body_len"] == 4
    assert not any(name == "expect" for name, _ in reply.json()["headers"])
    await client.aclose()


@pytest.mark.anyio
async def test_hop_by_hop_fields_are_stripped_and_the_hook_applies(upstream: Upstream, gateway_for) -> None:
    def hide_server(status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [(n, v) for n, v in headers if n != b"server"] + [(b"x-status", b"%d" % status)]

    gateway, _ = await gateway_for([upstream.address], response_headers=hide_server)
    client = await RawClient.connect(gateway.port)
    reply = await client.request(b"GET /hop HTTP/1.1\r\nHost: a\r\n\r\n")
    names = [name for name, _ in reply.headers]
    for hop in (b"connection", b"keep-alive", b"x-secret", b"proxy-connection", b"upgrade", b"server"):
        assert hop not in names
    assert reply.header(b"x-kept") == b"yes"
    assert reply.header(b"x-status") == b"200"
    assert reply.header(b"date") is not None
    assert reply.body == b"ok"
    await client.aclose()


@pytest.mark.anyio
async def test_request_hop_by_hop_fields_are_not_forwarded(upstream: Upstream, gateway_for) -> None:
    gateway, _ = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    reply = await client.request(
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n"
        b"Keep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Public: 2\r\n\r\n"
    )
    names = [name for name, _ in reply.json()["headers"]]
    assert names == ["host", "x-public"]
    await client.aclose()


@pytest.mark.anyio
async def test_host_is_the_original_unless_the_policy_sets_one(upstream: Upstream, groups, gateways) -> None:
    group = UpstreamGroup("g", [upstream.address])
    groups.append(group)

    def handler(head: RequestHead) -> Forward:
        headers = [(n, v) for n, v in head.headers if n != b"host"]
        if head.target == b"/echo?override":
            headers.append((b"host", b"internal.svc"))
        return Forward(upstream=group, target=head.target, headers=headers)

    gateway = GatewayServer(handler, limits=EngineLimits())
    await gateway.start("127.0.0.1", 0)
    gateways.append(gateway)
    client = await RawClient.connect(gateway.port)
    data = (await client.request(b"GET /echo HTTP/1.1\r\nHost: public.example\r\n\r\n")).json()
    assert ["host", "public.example"] in data["headers"]
    data = (await client.request(b"GET /echo?override HTTP/1.1\r\nHost: public.example\r\n\r\n")).json()
    assert ["host", "internal.svc"] in data["headers"]
    assert ["host", "public.example"] not in data["headers"]
    await client.aclose()


@pytest.mark.anyio
async def test_absolute_form_target_reaches_the_handler_unchanged(upstream: Upstream, gateway_for) -> None:
    gateway, handler = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    await client.request(b"GET http://elsewhere.example/echo HTTP/1.1\r\nHost: a\r\n\r\n")
    assert handler.heads[0].target == b"http://elsewhere.example/echo"
    await client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "raw",
    [
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"CONNECT internal:22 HTTP/1.1\r\nHost: internal:22\r\n\r\n",
    ],
)
async def test_upgrade_and_connect_are_refused(upstream: Upstream, gateway_for, raw: bytes) -> None:
    gateway, handler = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    reply = await client.request(raw)
    assert reply.status == 501
    assert reply.header(b"content-type") == b"application/problem+json"
    assert reply.json()["status"] == 501
    assert await client.closed()
    assert handler.heads == []
    await client.aclose()


@pytest.mark.anyio
async def test_failing_response_headers_hook_is_502(upstream: Upstream, gateway_for) -> None:
    def broken(status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        raise KeyError("bug")

    gateway, handler = await gateway_for([upstream.address], response_headers=broken)
    client = await RawClient.connect(gateway.port)
    reply = await client.request(GET_ECHO)
    assert reply.status == 502
    assert handler.outcomes[0].error == "response_headers_error"
    await client.aclose()


@pytest.mark.anyio
async def test_outcome_of_a_forward(upstream: Upstream, gateway_for) -> None:
    gateway, handler = await gateway_for([upstream.address])
    client = await RawClient.connect(gateway.port)
    reply = await client.request(b"GET /bytes/1234 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(reply.body) == 1234
    (outcome,) = handler.outcomes
    assert outcome.status == 200
    assert outcome.bytes_sent == 1234
    assert outcome.upstream == upstream.address
    assert outcome.upstream_seconds is not None
    assert 0 <= outcome.upstream_seconds <= outcome.total_seconds
    await client.aclose()


@pytest.mark.anyio
async def test_body_queued_during_an_async_decision_is_forwarded(
    upstream: Upstream, groups, gateways
) -> None:
    # An awaited decision (a token not yet in the cache) on a pooled connection: the body that
    # arrived meanwhile must be forwarded without waiting for more client bytes.
    group = UpstreamGroup("g", [upstream.address])
    groups.append(group)

    async def handler(head: RequestHead) -> Forward:
        await asyncio.sleep(0.05)
        return Forward(upstream=group, target=head.target, headers=list(head.headers))

    gateway = GatewayServer(handler, limits=EngineLimits())
    await gateway.start("127.0.0.1", 0)
    gateways.append(gateway)
    client = await RawClient.connect(gateway.port)
    # The first request opens the pooled connection; the second reuses it.
    for body in (b"first", b"second body"):
        request = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        data = (await asyncio.wait_for(client.request(request), 5)).json()
        assert data["body_len"] == len(body)
    await client.aclose()
