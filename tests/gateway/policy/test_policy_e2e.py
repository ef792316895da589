"""End to end over real sockets: engine + policy layer + a recording upstream + a real JWKS.

Requests that must be refused are written as raw bytes (an HTTP client library would
normalise the very paths under test); the upstream records everything it receives so each test
can assert what it never saw.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from bastion.gateway.app import Gateway
from bastion.gateway.app import create_gateway
from bastion.gateway.observe import AccessLog
from bastion.gateway.settings import GatewaySettings

from .helpers import Issuer

AUD = "https://api.example"


@dataclass
class Upstream:
    """A real HTTP server that records each request it receives."""

    name: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> None:
        async def record(request: web.Request) -> web.Response:
            self.seen.append(
                {"method": request.method, "target": request.raw_path, "headers": list(request.raw_headers)}
            )
            return web.json_response(
                {"upstream": self.name, "target": request.raw_path},
                headers={"Server": "gunicorn/21", "X-Powered-By": "Express"},
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def header(self, index: int, name: bytes) -> list[bytes]:
        return [v for k, v in self.seen[index]["headers"] if k.lower() == name]


def gateway_settings(
    issuer: Issuer, catalog: Upstream, public: Upstream, **overrides: Any
) -> GatewaySettings:
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "realm": "shop",
        "strip_headers": ["X-User-Id"],
        "issuers": [{"issuer": issuer.issuer, "jwks_uri": issuer.jwks_uri, "audience": AUD}],
        "upstreams": {
            "catalog": {"targets": [f"127.0.0.1:{catalog.port}"]},
            "public": {"targets": [f"127.0.0.1:{public.port}"]},
        },
        "routes": [
            {
                "prefix": "/catalog",
                "upstream": "catalog",
                "scopes": {"GET": ["catalog:read"], "*": ["catalog:write"]},
            },
            {"prefix": "/public", "upstream": "public", "auth": "none"},
        ],
    }
    data.update(overrides)
    return GatewaySettings.model_validate(data)


@dataclass
class Stack:
    issuer: Issuer
    catalog: Upstream
    public: Upstream
    gateway: Gateway
    log: io.BytesIO

    @property
    def port(self) -> int:
        assert self.gateway.port is not None
        return self.gateway.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    issuer = Issuer("https://auth.example")
    catalog = Upstream("catalog")
    public = Upstream("public")
    for server in (issuer, catalog, public):
        await server.start()
    log = io.BytesIO()
    gateway = create_gateway(gateway_settings(issuer, catalog, public), access_log=AccessLog(log))
    await gateway.start()
    try:
        yield Stack(issuer, catalog, public, gateway, log)
    finally:
        await gateway.close()
        for server in (issuer, catalog, public):
            await server.stop()


async def raw(port: int, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send ``request`` verbatim and read one response (the request asks to close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(b" ")[1]), headers, body


def get(target: bytes, *extra: bytes) -> bytes:
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: api.example\r\n"
        + b"".join(h + b"\r\n" for h in extra)
        + (b"Connection: close\r\n\r\n")
    )


BYPASS_FORMS = [
    b"/public/../catalog/items",
    b"/public/%2e%2e/catalog/items",
    b"/public/%2E%2E/catalog/items",
    b"/public/.%2e/catalog/items",
    b"/public%2F..%2Fcatalog/items",
    b"/public%2f..%2fcatalog/items",
    b"/public%5C..%5Ccatalog/items",
    b"/public/..;/catalog/items",
    b"/public;/../catalog/items",
    b"/public/%252e%252e/catalog/items",
    b"/public/%252F/catalog",
    b"//catalog/items",
    b"/public//../catalog/items",
    b"/public/./../catalog/items",
    b"/catalog/items%00.json",
    b"http://api.example/catalog/items",
    b"/public/\\..\\catalog/items",
]


@pytest.mark.anyio
@pytest.mark.parametrize("target", BYPASS_FORMS)
async def test_bypass_forms_never_reach_the_upstream(stack: Stack, target: bytes) -> None:
    status, headers, _ = await raw(stack.port, get(target))
    # Refused by the policy layer (400) or already by the engine's HTTP parser (400).
    assert status == 400
    assert headers[b"content-type"] == b"application/problem+json"
    assert stack.catalog.seen == []
    assert stack.public.seen == []


@pytest.mark.anyio
async def test_identity_is_verified_set_and_spoofs_stripped(stack: Stack) -> None:
    token = stack.issuer.token(scope="catalog:read", subject="alice", client_id="shop")
    status, headers, body = await raw(
        stack.port,
        get(
            b"/catalog/items?x=1",
            b"Authorization: Bearer " + token.encode(),
            b"X-Bastion-Subject: admin",
            b"X-BASTION-SCOPES: admin:all",
            b"X-User-Id: 1",
            b"X-Forwarded-For: 6.6.6.6",
        ),
    )
    assert status == 200
    assert orjson.loads(body) == {"upstream": "catalog", "target": "/catalog/items?x=1"}
    assert headers[b"server"] == b"bastion"
    assert b"x-powered-by" not in headers
    assert len(headers[b"x-request-id"]) == 32
    [seen] = stack.catalog.seen
    assert seen["target"] == "/catalog/items?x=1"
    assert stack.catalog.header(0, b"x-bastion-subject") == [b"alice"]
    assert stack.catalog.header(0, b"x-bastion-client") == [b"shop"]
    assert stack.catalog.header(0, b"x-bastion-scopes") == [b"catalog:read"]
    assert stack.catalog.header(0, b"x-user-id") == []
    assert stack.catalog.header(0, b"authorization") == []
    assert stack.catalog.header(0, b"x-forwarded-for") == [b"127.0.0.1"]
    assert stack.catalog.header(0, b"x-request-id") == [headers[b"x-request-id"]]


@pytest.mark.anyio
async def test_public_route_strips_spoofed_identity(stack: Stack) -> None:
    status, _, _ = await raw(stack.port, get(b"/public/x", b"X-Bastion-Subject: admin", b"X-User-Id: 1"))
    assert status == 200
    assert stack.public.header(0, b"x-bastion-subject") == []
    assert stack.public.header(0, b"x-user-id") == []


@pytest.mark.anyio
async def test_error_shapes_on_the_wire(stack: Stack) -> None:
    status, headers, body = await raw(stack.port, get(b"/catalog/items"))
    assert status == 401
    assert headers[b"www-authenticate"] == b'Bearer realm="shop"'
    assert orjson.loads(body)["status"] == 401

    bad = stack.issuer.token(lifetime=-300)
    status, headers, _ = await raw(
        stack.port, get(b"/catalog/items", b"Authorization: Bearer " + bad.encode())
    )
    assert status == 401
    assert headers[b"www-authenticate"].startswith(b'Bearer realm="shop", error="invalid_token"')

    reader = stack.issuer.token(scope="catalog:read").encode()
    request = b"DELETE /catalog/items/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + reader
    status, headers, _ = await raw(stack.port, request + b"\r\nConnection: close\r\n\r\n")
    assert status == 403
    assert b'error="insufficient_scope"' in headers[b"www-authenticate"]
    assert b'scope="catalog:write"' in headers[b"www-authenticate"]

    status, headers, body = await raw(stack.port, get(b"/nothing-here"))
    assert status == 404
    assert headers[b"content-type"] == b"application/problem+json"

    # A token only in the query is no credential (RFC 6750 §3.1: 401 without an error code);
    # beside an Authorization header it is a second credential (400 invalid_request).
    status, headers, _ = await raw(stack.port, get(b"/catalog/items?access_token=" + reader))
    assert status == 401
    assert headers[b"www-authenticate"] == b'Bearer realm="shop"'
    both = get(b"/catalog/items?access_token=" + reader, b"Authorization: Bearer " + reader)
    status, headers, _ = await raw(stack.port, both)
    assert status == 400
    assert headers[b"www-authenticate"].startswith(b'Bearer realm="shop", error="invalid_request"')
    assert stack.catalog.seen == []


@pytest.mark.anyio
async def test_logs_and_metrics(stack: Stack) -> None:
    token = stack.issuer.token().encode()
    assert (await raw(stack.port, get(b"/catalog/a", b"Authorization: Bearer " + token)))[0] == 200
    assert (await raw(stack.port, get(b"/catalog/a")))[0] == 401
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{stack.gateway.admin_port}/metrics") as response:
            text = await response.text()
        async with session.get(f"http://127.0.0.1:{stack.gateway.admin_port}/healthz") as health:
            assert health.status == 200
    assert 'bastion_gateway_requests_total{route="/catalog",status="200"} 1.0' in text
    assert 'bastion_gateway_auth_failures_total{reason="missing"} 1.0' in text
    stack.gateway.access_log.flush()
    lines = [orjson.loads(line) for line in stack.log.getvalue().splitlines()]
    assert [line["status"] for line in lines] == [200, 401]
    assert lines[0]["upstream_ms"] is not None
    assert token.decode() not in stack.log.getvalue().decode()


@pytest.mark.anyio
async def test_reload_under_load_fails_no_request(stack: Stack) -> None:
    token = stack.issuer.token(scope="catalog:read")
    headers = {"Authorization": f"Bearer {token}"}
    statuses: list[int] = []
    upstreams: set[str] = set()
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with session.get(stack.url("/catalog/items"), headers=headers) as response:
                statuses.append(response.status)
                upstreams.add((await response.json())["upstream"])

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(session)) for _ in range(8)]
        for round_ in range(6):
            while len(statuses) < 40 * (round_ + 1):
                await asyncio.sleep(0.005)
            # Alternate the catalog route between the two upstreams.
            target = stack.public if round_ % 2 == 0 else stack.catalog
            await stack.gateway.reload(
                gateway_settings(
                    stack.issuer,
                    stack.catalog,
                    stack.public,
                    upstreams={
                        "catalog": {"targets": [f"127.0.0.1:{stack.catalog.port}"]},
                        "public": {"targets": [f"127.0.0.1:{stack.public.port}"]},
                        "next": {"targets": [f"127.0.0.1:{target.port}"]},
                    },
                    routes=[{"prefix": "/catalog", "upstream": "next", "scopes": {"GET": ["catalog:read"]}}],
                    drain_seconds=0.05,
                )
            )
        stop.set()
        await asyncio.gather(*clients)
    assert len(statuses) >= 240
    assert set(statuses) == {200}
    assert upstreams == {"catalog", "public"}
