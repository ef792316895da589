"""A small real HTTP/1.1 upstream and a raw HTTP client for the engine tests.

Both are written independently of the engine (plain asyncio streams, hand-rolled framing), so
that the engine is tested against someone else's reading of HTTP/1.1.

Upstream paths:

* ``/echo`` — 200 JSON: method, target, headers, body length and sha256, request framing.
* ``/bytes/N`` — N bytes with Content-Length; ``/chunked/N`` chunked; ``/close/N`` close-delimited.
* ``/status/N`` — that status, no body (``304``/``204``) or a short one.
* ``/sleep/S`` — answers after S seconds; ``/stall`` sends a head and part of a body, then stalls.
* ``/hop`` — a response full of hop-by-hop fields.
* ``/early`` — answers 413 without reading the request body, then closes.
* ``/slowread`` — reads the request body only when ``release_reads`` is set.
* ``/health`` — 200 while ``healthy`` else 503.

With ``drop_second_request`` set, a request arriving on an already used connection is read and
the connection closed without an answer: what a restarted upstream looks like to a pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from dataclasses import dataclass
from dataclasses import field

CHUNK = 64 * 1024


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_len: int
    connection_index: int


@dataclass
class Upstream:
    """The upstream server and what it saw."""

    server: asyncio.Server | None = None
    port: int = 0
    connections: int = 0
    seen: list[Seen] = field(default_factory=list)
    drop_second_request: bool = False
    healthy: bool = True
    release_reads: asyncio.Event = field(default_factory=asyncio.Event)
    body_bytes_read: int = 0
    bytes_written: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every connection (an upstream going down)."""
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        index = self.connections
        self.writers.add(writer)
        served = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [
                    (k.strip().lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
                ]
                hmap = dict(headers)
                if self.drop_second_request and served >= 1:
                    writer.transport.abort()
                    return
                served += 1
                try:
                    keep = await self._respond(reader, writer, method, target, headers, hmap, index)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the gateway gave up on this request mid-body
                if not keep:
                    return
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, hmap: dict[str, str]) -> tuple[bytes, bool]:
        if hmap.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return b"".join(parts), True
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
        length = int(hmap.get("content-length", "0"))
        return (await reader.readexactly(length) if length else b""), False

    async def _respond(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        hmap: dict[str, str],
        index: int,
    ) -> bool:
        path = target.split("?", 1)[0]
        if path == "/early":
            writer.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            return False
        if path == "/slowread":
            await self.release_reads.wait()
            total = 0
            length = int(hmap.get("content-length", "0"))
            while total < length:
                data = await reader.read(min(CHUNK, length - total))
                if not data:
                    return False
                total += len(data)
                self.body_bytes_read = total
            body = b""
            chunked = False
        else:
            body, chunked = await self._read_body(reader, hmap)
        self.seen.append(Seen(method, target, headers, len(body), index))
        keep = hmap.get("connection", "").lower() != "close"
        head_only = method == "HEAD"
        if path == "/echo" or path == "/slowread":
            payload = json.dumps(
                {
                    "method": method,
                    "target": target,
                    "headers": headers,
                    "body_len": self.body_bytes_read if path == "/slowread" else len(body),
                    "body_sha256": hashlib.sha256(body).hexdigest(),
                    "chunked": chunked,
                    "connection": index,
                }
            ).encode()
            await self._send(writer, 200, [("content-type", "application/json")], payload, head_only)
        elif path.startswith("/bytes/"):
            n = int(path.rsplit("/", 1)[1])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
            if not head_only:
                await self._stream(writer, n)
        elif path.startswith("/chunked/"):
            n = int(path.rsplit("/", 1)[1])
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n")
            if not head_only:
                sent = 0
                while sent < n:
                    size = min(CHUNK, n - sent)
                    writer.write(b"%x\r\n" % size + b"c" * size + b"\r\n")
                    sent += size
                    await writer.drain()
                writer.write(b"0\r\nx-t: 1\r\n\r\n")
        elif path.startswith("/close/"):
            n = int(path.rsplit("/", 1)[1])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
            await self._stream(writer, n)
            await writer.drain()
            return False
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            if code in (204, 304):
                writer.write(b'HTTP/1.1 %d X\r\netag: "e"\r\n\r\n' % code)
            else:
                await self._send(writer, code, [], b"status", head_only)
        elif path.startswith("/sleep/"):
            await asyncio.sleep(float(path.rsplit("/", 1)[1]))
            await self._send(writer, 200, [], b"slept", head_only)
        elif path == "/stall":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            await writer.drain()
            await asyncio.sleep(30)
            return False
        elif path == "/hop":
            writer.write(
                b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-secret\r\nkeep-alive: timeout=5\r\n"
                b"x-secret: internal\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\n"
                b"server: internal-upstream/1.0\r\nx-kept: yes\r\ncontent-length: 2\r\n\r\nok"
            )
        elif path == "/health":
            await self._send(writer, 200 if self.healthy else 503, [], b"health", head_only)
        else:
            await self._send(writer, 404, [], b"nope", head_only)
        await writer.drain()
        return keep

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        head_only: bool,
    ) -> None:
        lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body))

    async def _stream(self, writer: asyncio.StreamWriter, n: int) -> None:
        block = b"b" * CHUNK
        sent = 0
        while sent < n:
            size = min(CHUNK, n - sent)
            writer.write(block if size == CHUNK else block[:size])
            sent += size
            self.bytes_written += size
            await writer.drain()


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)


class RawClient:
    """A client that sends exactly the bytes it is given and reads responses by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, port: int, *, ssl_context: ssl.SSLContext | None = None, limit: int = 2**16
    ) -> RawClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=ssl_context,
            server_hostname="localhost" if ssl_context else None,
            limit=limit,
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = [(k.strip().lower(), v.strip()) for k, v in (ln.split(b":", 1) for ln in lines[1:] if ln)]
        return status, headers

    async def read_response(self, method: bytes = b"GET") -> Reply:
        status, headers = await self.read_head()
        while 100 <= status < 200:
            status, headers = await self.read_head()
        hmap = dict(headers)
        if method == b"HEAD" or status in (204, 304):
            return Reply(status, headers, b"")
        if hmap.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            return Reply(status, headers, b"".join(parts))
        if b"content-length" in hmap:
            return Reply(status, headers, await self.reader.readexactly(int(hmap[b"content-length"])))
        return Reply(status, headers, await self.reader.read())

    async def request(self, data: bytes, method: bytes = b"GET") -> Reply:
        await self.send(data)
        return await self.read_response(method)

    async def closed(self) -> bool:
        """Whether the server closed the connection (reads to EOF)."""
        try:
            rest = await self.reader.read()
        except ConnectionError:
            return True
        return rest == b""

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
