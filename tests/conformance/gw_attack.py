"""Attack fixtures for the gateway conformance tests: a full stack on loopback.

The stack is the real thing end to end: the engine (``GatewayServer``) and the policy layer built
by ``create_gateway`` from settings, a real issuer serving its JWKS over HTTP
(``tests.gateway.policy.helpers.Issuer``), and :class:`RecordingUpstream`, a hand-rolled upstream
that keeps every byte it receives and parses it on its own, strictly. A test that attacks the
gateway then asserts on what that upstream *received*: a smuggled or unauthorized request shows up
there whatever status the client was told.

Routes of the stack (every one to the same recording upstream):

* ``/admin`` — token required, scope ``admin`` for every method;
* ``/catalog`` — token required, ``catalog:read`` for GET/HEAD, ``catalog:write`` otherwise;
* ``/public`` — no token;
* ``/`` — no token (a catch-all: what a path confusion would land on).

Paths the upstream treats specially (misbehaving on purpose, for robustness tests) start with
``/public/misbehave/``; everything else gets a ``200`` JSON echo of what was received.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import pytest

from bastion.gateway.app import Gateway
from bastion.gateway.app import create_gateway
from bastion.gateway.observe import AccessLog
from bastion.gateway.settings import GatewaySettings
from tests.gateway.engine.servers import RawClient
from tests.gateway.engine.servers import Reply
from tests.gateway.policy.helpers import Issuer

AUD = "https://api.example"
ISSUER = "https://auth.example"
HOST = b"api.example"


@dataclass
class Received:
    """One request as the recording upstream parsed it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    connection: int

    def header(self, name: bytes) -> list[bytes]:
        """Every value of ``name`` (exact, lower-case match on the received name)."""
        return [value for key, value in self.headers if key.lower() == name]

    def names(self) -> list[bytes]:
        """The received header names, lower-cased."""
        return [key.lower() for key, _ in self.headers]


class _Unparseable(Exception):
    pass


@dataclass
class RecordingUpstream:
    """An HTTP/1.1 upstream that records the raw bytes of every connection.

    ``raw`` holds what each connection received, byte for byte; ``requests`` what a strict
    parser made of it (``Content-Length`` or ``chunked`` framing, nothing lenient); ``errors``
    notes connections whose bytes did not parse.
    """

    server: asyncio.Server | None = None
    port: int = 0
    raw: list[bytearray] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def all_bytes(self) -> bytes:
        return b"".join(bytes(chunk) for chunk in self.raw)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.raw.append(bytearray())
        index = len(self.raw) - 1
        self.writers.add(writer)
        try:
            while True:
                try:
                    request = await self._read_request(reader, index)
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                except _Unparseable as exc:
                    self.errors.append(str(exc))
                    return
                self.requests.append(request)
                if not await self._respond(request, writer):
                    return
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, index: int, data: bytes) -> bytes:
        self.raw[index] += data
        return data

    async def _read_request(self, reader: asyncio.StreamReader, index: int) -> Received:
        head = await self._read(reader, index, await reader.readuntil(b"\r\n\r\n"))
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1":
            raise _Unparseable(f"request line {lines[0][:80]!r}")
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or b"\r" in line or b"\n" in line:
                raise _Unparseable(f"header line {line[:80]!r}")
            headers.append((name, value.strip(b" \t")))
        lowered = {name.lower() for name, _ in headers}
        te = [value for name, value in headers if name.lower() == b"transfer-encoding"]
        cl = [value for name, value in headers if name.lower() == b"content-length"]
        if (te and cl) or len(te) > 1 or len(cl) > 1 or b"host" not in lowered:
            raise _Unparseable(f"framing {te!r} {cl!r}")
        body = b""
        if te:
            if te[0].lower() != b"chunked":
                raise _Unparseable(f"transfer-encoding {te[0]!r}")
            chunks = []
            while True:
                size_line = await self._read(reader, index, await reader.readuntil(b"\r\n"))
                size = int(size_line[:-2], 16)
                if size == 0:
                    trailer = await self._read(reader, index, await reader.readuntil(b"\r\n"))
                    if trailer != b"\r\n":
                        raise _Unparseable("trailer fields forwarded")
                    break
                chunks.append(await self._read(reader, index, await reader.readexactly(size)))
                if await self._read(reader, index, await reader.readexactly(2)) != b"\r\n":
                    raise _Unparseable("chunk not followed by CRLF")
            body = b"".join(chunks)
        elif cl:
            if not cl[0].isdigit():
                raise _Unparseable(f"content-length {cl[0]!r}")
            length = int(cl[0])
            body = await self._read(reader, index, await reader.readexactly(length)) if length else b""
        return Received(parts[0], parts[1], headers, body, index)

    async def _respond(self, request: Received, writer: asyncio.StreamWriter) -> bool:
        path = request.target.split(b"?", 1)[0]
        if path.startswith(b"/public/misbehave/"):
            return await self._misbehave(path.rsplit(b"/", 1)[1], writer)
        payload = json.dumps(
            {
                "target": request.target.decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers],
                "body_len": len(request.body),
            }
        ).encode()
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        writer.write(head % len(payload) + (b"" if request.method == b"HEAD" else payload))
        await writer.drain()
        return True

    async def _misbehave(self, how: bytes, writer: asyncio.StreamWriter) -> bool:
        if how == b"garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.6 internal-db.corp:5432\r\n\r\n")
        elif how == b"interim-flood":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 20_000)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        elif how == b"interim-forever":
            with contextlib.suppress(ConnectionError):
                for _ in range(2000):
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.005)
            return False
        elif how == b"header-forever":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            with contextlib.suppress(ConnectionError):
                for _ in range(2000):
                    writer.write(b"x-h: " + b"a" * 1000 + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.001)
            return False
        elif how == b"cut-body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
        elif how == b"huge-header":
            writer.write(
                b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (4 * 1024 * 1024) + b"\r\ncontent-length: 2\r\n\r\nok"
            )
        elif how == b"many-headers":
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"x-h: 1\r\n" * 200_000 + b"content-length: 2\r\n\r\nok")
        elif how == b"switch":
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
            )
        elif how == b"smuggle-response":
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nhijack!"
            )
        elif how == b"cors":
            # A service with its own (too wide) CORS answer: a gateway's CORS route must not
            # let it through.
            writer.write(
                b"HTTP/1.1 200 OK\r\naccess-control-allow-origin: *\r\n"
                b"access-control-allow-credentials: true\r\naccess-control-expose-headers: x-secret\r\n"
                b"access-control-allow-methods: *\r\nvary: accept-encoding\r\ncontent-length: 2\r\n\r\nok"
            )
        elif how == b"bad-length":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!")
        elif how == b"internal-error":
            writer.write(
                b"HTTP/1.1 500 Internal Server Error\r\nserver: gunicorn/21\r\nx-powered-by: Express\r\n"
                b"content-length: 0\r\n\r\n"
            )
            await writer.drain()
            return True
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return False


def settings(upstream: RecordingUpstream, issuer: Issuer, **overrides: Any) -> GatewaySettings:
    """The stack's gateway settings (see the module docstring), with ``overrides`` applied."""
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": None,
        "realm": "shop",
        "strip_headers": ["X-User-Id"],
        "issuers": [{"issuer": issuer.issuer, "jwks_uri": issuer.jwks_uri, "audience": AUD}],
        "upstreams": {"app": {"targets": [upstream.address]}},
        "routes": [
            {"prefix": "/admin", "upstream": "app", "scopes": {"*": ["admin"]}, "read_timeout": 1.0},
            {
                "prefix": "/catalog",
                "upstream": "app",
                "scopes": {"GET": ["catalog:read"], "HEAD": ["catalog:read"], "*": ["catalog:write"]},
                "read_timeout": 1.0,
            },
            {"prefix": "/public", "upstream": "app", "auth": "none", "read_timeout": 1.0},
            {"prefix": "/", "upstream": "app", "auth": "none", "read_timeout": 1.0},
        ],
    }
    data.update(overrides)
    return GatewaySettings.model_validate(data)


@dataclass
class Stack:
    """A running gateway in front of a :class:`RecordingUpstream`, with its issuer."""

    issuer: Issuer
    upstream: RecordingUpstream
    gateway: Gateway
    log: io.BytesIO

    @property
    def port(self) -> int:
        port = self.gateway.port
        if port is None:
            raise RuntimeError("the gateway is not listening")
        return port

    def token(self, **claims: Any) -> bytes:
        """A valid access token of the stack's issuer (``scope`` etc. as keyword arguments)."""
        return self.issuer.token(**claims).encode("ascii")

    async def client(self) -> RawClient:
        return await RawClient.connect(self.port)

    async def send(self, data: bytes, *, method: bytes = b"GET", timeout: float = 5.0) -> Reply:
        """Send ``data`` on a fresh connection and read one response."""
        client = await self.client()
        try:
            return await asyncio.wait_for(client.request(data, method), timeout)
        finally:
            await client.aclose()

    async def exchange(self, data: bytes, *, timeout: float = 5.0) -> bytes:
        """Send ``data`` on a fresh connection and read everything until the gateway closes."""
        client = await self.client()
        try:
            await client.send(data)
            with contextlib.suppress(ConnectionError):
                return await asyncio.wait_for(client.reader.read(), timeout)
            return b""
        finally:
            await client.aclose()

    def log_text(self) -> str:
        self.gateway.access_log.flush()
        return self.log.getvalue().decode()


def request(method: bytes, target: bytes, *headers: bytes, body: bytes = b"", close: bool = True) -> bytes:
    """A request with ``Host`` first, then ``headers`` (raw lines), then ``body`` verbatim."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + HOST, *headers]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def get(target: bytes, *headers: bytes, close: bool = True) -> bytes:
    return request(b"GET", target, *headers, close=close)


def bearer(token: bytes) -> bytes:
    return b"Authorization: Bearer " + token


async def start_stack(**overrides: Any) -> Stack:
    issuer = Issuer(ISSUER)
    upstream = RecordingUpstream()
    await issuer.start()
    await upstream.start()
    log = io.BytesIO()
    gateway = create_gateway(settings(upstream, issuer, **overrides), access_log=AccessLog(log))
    await gateway.start()
    return Stack(issuer, upstream, gateway, log)


async def stop_stack(stack: Stack) -> None:
    await stack.gateway.close()
    await stack.upstream.stop()
    await stack.issuer.stop()


@contextlib.asynccontextmanager
async def running_stack(**overrides: Any) -> AsyncIterator[Stack]:
    """A started stack (see :func:`start_stack`), stopped on exit: a test module's fixture is
    ``async with running_stack(routes=ROUTES) as stack: yield stack``."""
    stack = await start_stack(**overrides)
    try:
        yield stack
    finally:
        await stop_stack(stack)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """A running :class:`Stack` with the default settings."""
    async with running_stack() as running:
        yield running
