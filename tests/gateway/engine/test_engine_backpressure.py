"""Back-pressure: big bodies in either direction never pile up in the gateway's memory.

The assertions are on bytes buffered (transport write buffers and upstream progress), never on
time: a stalled reader must stall the writer on the other side of the gateway.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from bastion.gateway.limits import EngineLimits

from .servers import RawClient
from .servers import Upstream

MB = 1024 * 1024
SIZE = 64 * MB
# One client write buffer above the high-water mark plus one upstream read, with room to spare.
BOUND = 1 * MB


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_large_response_to_a_slow_client_keeps_memory_flat(upstream: Upstream, gateway_for) -> None:
    gateway, handler = await gateway_for([upstream.address], limits=EngineLimits())
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", gateway.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
    client = RawClient(reader, writer)
    await client.send(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % SIZE)
    status, headers = await client.read_head()
    assert status == 200
    assert dict(headers)[b"content-length"] == b"%d" % SIZE
    received = 0
    peak = 0
    # Stall: read one MiB, then nothing while everything upstream of us fills up.
    while received < MB:
        received += len(await reader.read(64 * 1024))
    await settle()
    for _ in range(5):
        peak = max(peak, gateway.buffered_bytes())
        await asyncio.sleep(0.01)
    assert peak <= BOUND
    # The upstream was stopped too: only kernel socket buffers sit between it and the client.
    assert upstream.bytes_written < received + 40 * MB
    # Then drain slowly-ish, checking the gateway's buffer all along.
    while received < SIZE:
        data = await reader.read(256 * 1024)
        assert data
        received += len(data)
        peak = max(peak, gateway.buffered_bytes())
    assert received == SIZE
    assert peak <= BOUND
    await client.aclose()
    for _ in range(100):
        if handler.outcomes:
            break
        await asyncio.sleep(0.01)
    assert handler.outcomes[0].bytes_sent == SIZE


@pytest.mark.anyio
async def test_large_upload_to_a_slow_upstream_keeps_memory_flat(upstream: Upstream, gateway_for) -> None:
    size = 32 * MB
    gateway, handler = await gateway_for([upstream.address], limits=EngineLimits(max_body=size))
    group = handler.group
    client = await RawClient.connect(gateway.port)
    client.writer.transport.set_write_buffer_limits(high=64 * 1024)
    sent = 0

    async def upload() -> None:
        nonlocal sent
        client.writer.write(b"POST /slowread HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"u" * (64 * 1024)
        while sent < size:
            client.writer.write(block)
            sent += len(block)
            await client.writer.drain()

    uploading = asyncio.create_task(upload())
    # The upstream reads nothing yet: the client must be held back, not buffered.
    for _ in range(30):
        await asyncio.sleep(0.01)
        assert group.buffered_bytes() <= BOUND
        assert gateway.buffered_bytes() <= BOUND
    assert sent < size - 8 * MB
    assert not uploading.done()
    upstream.release_reads.set()
    while not uploading.done():
        assert group.buffered_bytes() <= BOUND
        await asyncio.sleep(0.005)
    await uploading
    reply = await client.read_response()
    assert reply.json()["body_len"] == size
    await client.aclose()
