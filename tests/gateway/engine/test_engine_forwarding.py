"""Forwarding through the engine against a real upstream on loopback."""

from __future__ import annotations

import pytest

from .servers import RawClient
from .servers import Upstream


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
