"""Automatic bans through the whole gateway (engine and policy layer) on a dual-stack listener.

``::1`` is the one trusted proxy, as in ``test_gw_iprules``: a client on ``127.0.0.1`` sending its
own, rotating ``X-Forwarded-For`` is still ``127.0.0.1``, and a request through ``::1`` counts
against the address the proxy reports. Thresholds are 3 per kind.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bastion.gateway.app import Gateway
from bastion.gateway.app import create_gateway
from bastion.gateway.autoban import BanGuard
from bastion.gateway.bans import BanSet
from bastion.gateway.observe import AccessLog
from bastion.storage.open import open_state
from bastion.storage.protocols import FastState
from tests.conformance.gw_attack import RecordingUpstream
from tests.conformance.gw_attack import settings
from tests.conformance.test_gw_iprules import DualStackServer
from tests.gateway.engine.servers import RawClient
from tests.gateway.engine.servers import Reply
from tests.gateway.policy.helpers import Issuer

N = 3
ROUTES = [
    {"prefix": "/api", "upstream": "app", "scopes": {"GET": ["catalog:read"]}, "read_timeout": 1.0},
    {"prefix": "/open", "upstream": "app", "auth": "none", "read_timeout": 1.0},
]
BAD = b"Authorization: Bearer " + b"e30.e30.c2ln"  # well formed, never valid


class BanningDualStackServer(DualStackServer):
    """The dual-stack server, passing the gateway's ``on_rejected`` hook to the engine."""

    @property
    def on_rejected(self) -> Callable[[str, int], None] | None:
        return self.server.on_rejected

    @on_rejected.setter
    def on_rejected(self, hook: Callable[[str, int], None] | None) -> None:
        self.server.on_rejected = hook


@dataclass
class Stack:
    gateway: Gateway
    upstream: RecordingUpstream
    issuer: Issuer
    guard: BanGuard

    def valid(self) -> bytes:
        return b"Authorization: Bearer " + self.issuer.token(scope="catalog:read").encode()

    async def raw(self, source: str, data: bytes) -> Reply:
        port = self.gateway.port
        assert port is not None
        reader, writer = await asyncio.open_connection(source, port)
        client = RawClient(reader, writer)
        try:
            return await asyncio.wait_for(client.request(data), 5)
        finally:
            await client.aclose()

    async def send(self, source: str, target: bytes, *headers: bytes) -> Reply:
        lines = [b"GET " + target + b" HTTP/1.1", b"Host: api.example", *headers, b"Connection: close"]
        return await self.raw(source, b"\r\n".join(lines) + b"\r\n\r\n")


@pytest.fixture(params=["memory", "sqlite"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    state: FastState = open_state(
        "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 's.db'}"
    )
    issuer = Issuer("https://auth.example")
    upstream = RecordingUpstream()
    await issuer.start()
    await upstream.start()
    rule = {"threshold": N, "window": 60, "duration": 600}
    config = settings(
        upstream,
        issuer,
        routes=ROUTES,
        trusted_proxies=["::1/128"],
        bans={"auth": rule, "refused": rule, "rate_limit": rule},
    )
    guard = BanGuard(config.bans, config.trusted_proxies, bans=BanSet(), state=state, book=None)
    gateway = create_gateway(
        config, access_log=AccessLog(io.BytesIO()), server_factory=BanningDualStackServer, bans=guard
    )
    await gateway.start()
    try:
        yield Stack(gateway, upstream, issuer, guard)
    finally:
        await gateway.close()
        await guard.close()
        await upstream.stop()
        await issuer.stop()
        await state.close()


def assert_banned(reply: Reply) -> None:
    assert reply.status == 403
    assert reply.header(b"content-type") == b"application/problem+json"
    assert reply.json()["detail"] == "Requests from this address are refused for a while"
    assert reply.header(b"www-authenticate") is None


@pytest.mark.anyio
async def test_n_auth_failures_ban_the_address_even_for_a_valid_token(stack: Stack) -> None:
    for _ in range(N - 1):
        assert (await stack.send("127.0.0.1", b"/api/x", BAD)).status == 401
    assert (await stack.send("127.0.0.1", b"/api/x", stack.valid())).status == 200
    assert (await stack.send("127.0.0.1", b"/api/x", BAD)).status == 401  # the N-th
    assert_banned(await stack.send("127.0.0.1", b"/api/x", stack.valid()))
    # Before anything else: an unrouted path and a public route are refused alike.
    assert_banned(await stack.send("127.0.0.1", b"/nowhere"))
    assert_banned(await stack.send("127.0.0.1", b"/open/x"))
    assert [r.target for r in stack.upstream.requests] == [b"/api/x"]
    assert stack.guard.metrics.banned == 3
    # Another client (IPv6 loopback is a proxy without X-Forwarded-For: itself) is served.
    assert (await stack.send("::1", b"/api/x", stack.valid())).status == 200


@pytest.mark.anyio
async def test_requests_without_a_token_or_with_too_little_scope_do_not_count(stack: Stack) -> None:
    narrow = b"Authorization: Bearer " + stack.issuer.token(scope="other").encode()
    for _ in range(N + 2):
        assert (await stack.send("127.0.0.1", b"/api/x")).status == 401
        assert (await stack.send("127.0.0.1", b"/api/x", narrow)).status == 403
    assert (await stack.send("127.0.0.1", b"/api/x", stack.valid())).status == 200


@pytest.mark.anyio
async def test_a_rotating_forwarded_for_from_an_untrusted_peer_earns_no_fresh_count(stack: Stack) -> None:
    for n in range(N):
        xff = b"X-Forwarded-For: 10.0.%d.%d" % (n, n + 1)
        assert (await stack.send("127.0.0.1", b"/api/x", BAD, xff)).status == 401
    for n in range(20):
        xff = b"X-Forwarded-For: 10.9.%d.%d" % (n, 255 - n)
        assert_banned(await stack.send("127.0.0.1", b"/api/x", stack.valid(), xff))
    assert_banned(await stack.send("127.0.0.1", b"/open/x", b"X-Forwarded-For: ::1"))
    assert stack.guard.bans.get("127.0.0.1") is not None
    assert [ban.network for ban in stack.guard.bans.active()] == ["127.0.0.1"]


@pytest.mark.anyio
async def test_through_the_trusted_proxy_the_resolved_client_is_banned(stack: Stack) -> None:
    client = b"X-Forwarded-For: 198.51.100.7"
    for _ in range(N):
        assert (await stack.send("::1", b"/api/x", BAD, client)).status == 401
    assert_banned(await stack.send("::1", b"/api/x", stack.valid(), client))
    assert_banned(await stack.send("::1", b"/api/x", stack.valid(), b"X-Forwarded-For: ::ffff:198.51.100.7"))
    # The proxy itself and its other clients are not.
    assert (await stack.send("::1", b"/api/x", stack.valid(), b"X-Forwarded-For: 198.51.100.8")).status == 200
    assert (await stack.send("::1", b"/api/x", stack.valid())).status == 200
    assert [ban.network for ban in stack.guard.bans.active()] == ["198.51.100.7"]


@pytest.mark.anyio
async def test_refused_paths_ban(stack: Stack) -> None:
    for _ in range(N):
        assert (await stack.send("127.0.0.1", b"/open/%2e%2e/api/x")).status == 400
    assert_banned(await stack.send("127.0.0.1", b"/open/x"))
    assert_banned(await stack.send("127.0.0.1", b"/open/%2e%2e/api/x"))
    ban = stack.guard.bans.get("127.0.0.1")
    assert ban is not None
    assert ban.kind == "refused"


@pytest.mark.anyio
async def test_smuggling_attempts_refused_by_the_engine_ban(stack: Stack) -> None:
    smuggle = (
        b"POST /open/x HTTP/1.1\r\nHost: api.example\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    for _ in range(N):
        assert (await stack.raw("127.0.0.1", smuggle)).status == 400
    await stack.guard.settle()
    assert_banned(await stack.send("127.0.0.1", b"/open/x"))
    # The engine's refusals from the trusted proxy are never counted: it speaks for many.
    for _ in range(N):
        assert (await stack.raw("::1", smuggle)).status == 400
    await stack.guard.settle()
    assert (await stack.send("::1", b"/open/x")).status == 200
    assert stack.upstream.requests[-1].target == b"/open/x"


@pytest.mark.anyio
async def test_parallel_failures_ban_at_exactly_the_threshold(stack: Stack) -> None:
    # N - 1 at once: no ban.
    replies = await asyncio.gather(*(stack.send("127.0.0.1", b"/api/x", BAD) for _ in range(N - 1)))
    assert {r.status for r in replies} == {401}
    assert (await stack.send("127.0.0.1", b"/api/x", stack.valid())).status == 200
    # Many at once: one ban, the first one, and every request after the replies is refused.
    replies = await asyncio.gather(*(stack.send("127.0.0.1", b"/api/x", BAD) for _ in range(4 * N)))
    assert {r.status for r in replies} <= {401, 403}
    assert stack.guard.metrics.issued == {"auth": 1}
    ban = stack.guard.bans.get("127.0.0.1")
    assert ban is not None
    assert ban.repeat == 1
    assert_banned(await stack.send("127.0.0.1", b"/api/x", stack.valid()))
