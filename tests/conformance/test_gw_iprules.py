"""IP allow and deny lists through the whole gateway, on a dual-stack listener.

The gateway listens on ``::`` with IPv4 mapped in, as a dual-stack server does in production: a
client on ``127.0.0.1`` arrives as ``::ffff:127.0.0.1`` and must be judged as the IPv4 address,
a client on ``::1`` as IPv6. ``::1`` is the one trusted proxy, so ``X-Forwarded-For`` counts
from it and from nobody else: a client sending its own (rotating) ``X-Forwarded-For`` directly
cannot choose the address the lists see.
"""

from __future__ import annotations

import asyncio
import io
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bastion.gateway.app import Gateway
from bastion.gateway.app import create_gateway
from bastion.gateway.contract import Handler
from bastion.gateway.observe import AccessLog
from bastion.gateway.server import GatewayServer
from tests.conformance.gw_attack import RecordingUpstream
from tests.conformance.gw_attack import settings
from tests.gateway.engine.servers import RawClient
from tests.gateway.engine.servers import Reply
from tests.gateway.policy.helpers import Issuer

ROUTES = [
    {"prefix": "/open", "upstream": "app", "auth": "none", "read_timeout": 1.0},
    {
        "prefix": "/internal",
        "upstream": "app",
        "auth": "none",
        "ip_allow": ["10.0.0.0/8"],
        "read_timeout": 1.0,
    },
    {"prefix": "/no-v4-loopback", "upstream": "app", "auth": "none", "ip_deny": ["127.0.0.0/8"]},
    {"prefix": "/no-v6-loopback", "upstream": "app", "auth": "none", "ip_deny": ["::1/128"]},
    {"prefix": "/mapped-entry", "upstream": "app", "auth": "none", "ip_deny": ["::ffff:127.0.0.0/104"]},
]


class DualStackServer:
    """The engine's server on a ``::`` socket that accepts IPv4 too (``IPV6_V6ONLY`` off)."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None) -> None:
        self.server = GatewayServer(handler, ssl=ssl_context)

    async def start(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        sock.listen(64)
        sock.setblocking(False)
        await self.server.start(sock=sock)

    @property
    def port(self) -> int:
        return self.server.port

    def set_handler(self, handler: Handler) -> None:
        self.server.set_handler(handler)

    async def close(self) -> None:
        await self.server.close()


@dataclass
class Stack:
    gateway: Gateway
    upstream: RecordingUpstream

    async def send(self, source: str, target: bytes, *headers: bytes) -> Reply:
        port = self.gateway.port
        assert port is not None
        reader, writer = await asyncio.open_connection(source, port)
        client = RawClient(reader, writer)
        lines = [b"GET " + target + b" HTTP/1.1", b"Host: api.example", *headers, b"Connection: close"]
        try:
            return await asyncio.wait_for(client.request(b"\r\n".join(lines) + b"\r\n\r\n"), 5)
        finally:
            await client.aclose()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    issuer = Issuer("https://auth.example")
    upstream = RecordingUpstream()
    await issuer.start()
    await upstream.start()
    config = settings(
        upstream,
        issuer,
        routes=ROUTES,
        trusted_proxies=["::1/128"],
        ip_deny=["192.0.2.0/24", "2001:db8:bad::/48"],
    )
    gateway = create_gateway(config, access_log=AccessLog(io.BytesIO()), server_factory=DualStackServer)
    await gateway.start()
    try:
        yield Stack(gateway, upstream)
    finally:
        await gateway.close()
        await upstream.stop()
        await issuer.stop()


@pytest.mark.anyio
async def test_an_ipv4_client_on_a_dual_stack_socket_is_judged_as_ipv4(stack: Stack) -> None:
    assert (await stack.send("127.0.0.1", b"/open/x")).status == 200
    refused = await stack.send("127.0.0.1", b"/no-v4-loopback/x")
    assert refused.status == 403
    assert refused.header(b"content-type") == b"application/problem+json"
    # An entry written as IPv4-mapped IPv6 is the IPv4 network.
    assert (await stack.send("127.0.0.1", b"/mapped-entry/x")).status == 403
    assert (await stack.send("127.0.0.1", b"/no-v6-loopback/x")).status == 200
    assert [r.target for r in stack.upstream.requests] == [b"/open/x", b"/no-v6-loopback/x"]


@pytest.mark.anyio
async def test_an_ipv6_client_is_judged_as_ipv6(stack: Stack) -> None:
    assert (await stack.send("::1", b"/no-v6-loopback/x")).status == 403
    assert (await stack.send("::1", b"/no-v4-loopback/x")).status == 200
    assert (await stack.send("::1", b"/mapped-entry/x")).status == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    "forwarded", [b"10.1.1.1", b"10.0.0.1, 10.9.9.9", b"::ffff:10.1.1.1", b"8.8.8.8, 10.1.1.1"]
)
async def test_forwarded_for_from_an_untrusted_peer_changes_nothing(stack: Stack, forwarded: bytes) -> None:
    # 127.0.0.1 is not a trusted proxy: its X-Forwarded-For cannot put it inside 10.0.0.0/8 ...
    reply = await stack.send("127.0.0.1", b"/internal/x", b"X-Forwarded-For: " + forwarded)
    assert reply.status == 403
    # ... nor take it out of a deny list.
    reply = await stack.send("127.0.0.1", b"/no-v4-loopback/x", b"X-Forwarded-For: " + forwarded)
    assert reply.status == 403
    assert stack.upstream.requests == []


@pytest.mark.anyio
async def test_rotating_forwarded_for_never_lets_a_denied_client_through(stack: Stack) -> None:
    statuses = set()
    for n in range(20):
        forwarded = b"10.%d.%d.%d" % (n, n * 7 % 256, n * 13 % 256)
        statuses.add((await stack.send("127.0.0.1", b"/internal/x", b"X-Forwarded-For: " + forwarded)).status)
    assert statuses == {403}
    assert stack.upstream.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("forwarded", "status"),
    [
        (b"10.1.1.1", 200),
        (b"::ffff:10.1.1.1", 200),
        (b"6.6.6.6", 403),
        (b"10.1.1.1, 6.6.6.6", 403),  # the hop the trusted proxy saw is the client
        (b"6.6.6.6, 10.1.1.1", 200),
        (b"not-an-address", 403),  # the walk stops at the proxy (::1), outside 10/8
    ],
)
async def test_forwarded_for_through_the_trusted_proxy_is_the_client(
    stack: Stack, forwarded: bytes, status: int
) -> None:
    reply = await stack.send("::1", b"/internal/x", b"X-Forwarded-For: " + forwarded)
    assert reply.status == status


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("forwarded", "status"),
    [(b"192.0.2.77", 403), (b"::ffff:192.0.2.77", 403), (b"2001:db8:bad::1", 403), (b"2001:db8:bee::1", 200)],
)
async def test_the_gateways_deny_list_holds_on_every_route(
    stack: Stack, forwarded: bytes, status: int
) -> None:
    assert (await stack.send("::1", b"/open/x", b"X-Forwarded-For: " + forwarded)).status == status
