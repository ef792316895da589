"""Response-queue poisoning on pooled upstream connections, against a misbehaving upstream.

HTTP/1.1 has no request ids: the n-th response on a connection answers the n-th request. When an
upstream sends bytes the gateway does not count as part of a response — a body after a HEAD, a
204 or a 304 despite RFC 9110 §6.4.1, or anything after a complete response — and the connection
goes back to the pool, those bytes become the response to whichever request uses it next: another
client's. The upstream here does exactly that on purpose; a second client's request must still get
its own, genuine response, and the poisoned connection must be closed, not reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import AsyncIterator
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

import pytest

from .servers import RawClient

GENUINE = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ngenuine"
#: A complete response of its own, so that a reader taking it for the next one gets "injected".
INJECTED = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nx-injected: 1\r\n\r\ninjected"
VICTIM = b"GET /victim HTTP/1.1\r\nHost: a\r\n\r\n"


@dataclass
class Poisoner:
    """A raw upstream: ``/victim`` gets :data:`GENUINE`; ``/attack/<case>`` a response followed
    by :data:`INJECTED`, written with it or later (once the next request arrived on the
    connection, or when ``inject`` is set)."""

    server: asyncio.Server | None = None
    port: int = 0
    connections: int = 0
    closed: int = 0
    #: Requests read on each connection, in order.
    requests: list[list[bytes]] = field(default_factory=list)
    inject: asyncio.Event = field(default_factory=asyncio.Event)
    injected: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        seen: list[bytes] = []
        self.requests.append(seen)
        try:
            head = await _read_head(reader)
            while head is not None:
                seen.append(head.split(b"\r\n", 1)[0])
                path = head.split(b" ", 2)[1]
                after: bytes | None = None
                if path == b"/victim":
                    writer.write(GENUINE)
                else:
                    after = await self._attack(path.rsplit(b"/", 1)[1], writer)
                await writer.drain()
                head = await _read_head(reader)
                if head is not None and after is not None:
                    # The next request is here, on the same connection: now the late bytes go
                    # out, ahead of that request's genuine response.
                    writer.write(after)
        finally:
            self.closed += 1
            writer.close()

    async def _attack(self, case: bytes, writer: asyncio.StreamWriter) -> bytes | None:
        """Write the attack response; return bytes to send once the next request arrives."""
        length = b"content-length: %d\r\n" % len(INJECTED)
        if case == b"head-body":  # HEAD answered with its Content-Length, then the body anyway
            writer.write(b"HTTP/1.1 200 OK\r\n" + length + b"\r\n" + INJECTED)
        elif case == b"head-body-later":
            writer.write(b"HTTP/1.1 200 OK\r\n" + length + b"\r\n")
            return INJECTED
        elif case == b"204-body":
            writer.write(b"HTTP/1.1 204 No Content\r\n" + length + b"\r\n" + INJECTED)
        elif case == b"204-body-later":
            writer.write(b"HTTP/1.1 204 No Content\r\n" + length + b"\r\n")
            return INJECTED
        elif case == b"304-body":
            writer.write(b'HTTP/1.1 304 Not Modified\r\netag: "e"\r\n' + length + b"\r\n" + INJECTED)
        elif case == b"304-body-later":
            writer.write(b'HTTP/1.1 304 Not Modified\r\netag: "e"\r\n' + length + b"\r\n")
            return INJECTED
        elif case == b"extra":  # a complete response, then more
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" + INJECTED)
        elif case == b"204-extra":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n" + INJECTED)
        elif case == b"idle":  # a complete response; more bytes once the connection sits idle
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await self.inject.wait()
            writer.write(INJECTED)
            await writer.drain()
            self.injected.set()
        return None


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


@pytest.fixture
async def poisoner() -> AsyncIterator[Poisoner]:
    server = Poisoner()
    await server.start()
    yield server
    await server.stop()


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.005)


async def victim_gets_its_own_response(gateway_port: int) -> None:
    victim = await RawClient.connect(gateway_port)
    try:
        reply = await asyncio.wait_for(victim.request(VICTIM), 3)
    finally:
        await victim.aclose()
    assert reply.header(b"x-injected") is None
    assert (reply.status, reply.body) == (200, b"genuine")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "case", "status"),
    [
        (b"HEAD", b"head-body", 200),
        (b"HEAD", b"head-body-later", 200),
        (b"GET", b"204-body", 204),
        (b"GET", b"204-body-later", 204),
        (b"GET", b"304-body", 304),
        (b"GET", b"304-body-later", 304),
        (b"GET", b"extra", 200),
        (b"GET", b"204-extra", 204),
    ],
)
async def test_a_poisoned_connection_is_closed_and_the_next_client_gets_its_own_response(
    poisoner: Poisoner, gateway_for, method: bytes, case: bytes, status: int
) -> None:
    gateway, handler = await gateway_for([poisoner.address])
    attacker = await RawClient.connect(gateway.port)
    reply = await attacker.request(method + b" /attack/" + case + b" HTTP/1.1\r\nHost: a\r\n\r\n", method)
    assert reply.status == status
    assert reply.header(b"x-injected") is None
    # A second client, through the same pool.
    await victim_gets_its_own_response(gateway.port)
    # The attack's connection carried nothing else and was closed by the gateway; the victim's
    # request went out on a connection of its own.
    assert poisoner.connections == 2
    assert [len(seen) for seen in poisoner.requests] == [1, 1]
    await eventually(lambda: poisoner.closed >= 1, "the poisoned connection was never closed")
    # The attacker's own client connection is unaffected.
    assert (await attacker.request(VICTIM)).body == b"genuine"
    await attacker.aclose()
    assert [o.status for o in handler.outcomes] == [status, 200, 200]


@pytest.mark.anyio
async def test_bytes_on_an_idle_pooled_connection_close_it(poisoner: Poisoner, gateway_for) -> None:
    gateway, _ = await gateway_for([poisoner.address])
    client = await RawClient.connect(gateway.port)
    assert (await client.request(b"GET /attack/idle HTTP/1.1\r\nHost: a\r\n\r\n")).body == b"ok"
    poisoner.inject.set()
    await eventually(lambda: poisoner.closed == 1, "the gateway kept a connection that spoke unasked")
    await victim_gets_its_own_response(gateway.port)
    assert poisoner.connections == 2
    await client.aclose()


@pytest.mark.anyio
async def test_an_idle_connection_with_unread_bytes_is_not_handed_out(
    poisoner: Poisoner, gateway_for
) -> None:
    """The loop has not read the bytes yet (they came in the same iteration as the request that
    picks a connection): the socket is readable, and the pool discards the connection."""
    gateway, handler = await gateway_for([poisoner.address])
    client = await RawClient.connect(gateway.port)
    assert (await client.request(b"GET /attack/idle HTTP/1.1\r\nHost: a\r\n\r\n")).body == b"ok"
    [target] = handler.group.targets
    [conn] = target.idle
    assert conn.transport is not None
    # Hold the bytes in the kernel, as if the loop had not come round to this socket yet.
    conn.transport.pause_reading()
    poisoner.inject.set()
    await asyncio.wait_for(poisoner.injected.wait(), 2)
    fd = conn.transport.get_extra_info("socket").fileno()
    await eventually(lambda: bool(select.select([fd], [], [], 0)[0]), "the injected bytes never arrived")
    assert target.take_idle(asyncio.get_running_loop().time()) is None
    assert conn.transport.is_closing()
    await victim_gets_its_own_response(gateway.port)
    assert poisoner.connections == 2
    with contextlib.suppress(ConnectionError):
        await client.aclose()
