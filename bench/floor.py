"""The floor: the least a Python token-checking forwarder can do per request on this machine.

One :class:`asyncio.Protocol` per client connection on uvloop; httptools parses the request
through callbacks; the bearer token is looked up in a dict of tokens verified once at start-up
(signature, ``typ``, ``iss``, ``aud``, expiry; any other token is a 401); the request head goes to a pooled keep-alive
upstream connection as one buffer; the upstream's bytes go straight back to the client
transport, the end of each response found by httptools' response parser (Content-Length or
chunked framing). It checks far less than Bastion's gateway (no routes, scopes, revocation, header
filtering, limits, timeouts, logs or metrics): it is the floor the gateway suite sets beside the
bare engine and the full gateway, not a proxy to use::

    .venv/bin/python bench/floor.py --port 8080 --upstream-port 8081 \\
        --tokens rs256-tokens.txt --public-pem rs256-public.pem --alg RS256

A request with a body is forwarded whole, re-framed with a Content-Length, in the same single
write as its head. Pipelined requests are answered in order, one at a time. The upstream's
response goes to the client as it is (its own Connection header included).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httptools
import orjson
from cryptography.hazmat.primitives import serialization
from token_pool import AUDIENCE
from token_pool import ISSUER

from bastion.protocol import jose

UNAUTHORIZED = (
    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n"
    b'www-authenticate: Bearer error="invalid_token"\r\n\r\n'
)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
#: Request headers not forwarded as received: those of the client connection, and the body's
#: framing (a forwarded body is sent whole, with a Content-Length of its own).
NOT_FORWARDED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
        b"content-length",
        b"transfer-encoding",
    }
)


def verified_tokens(
    tokens: Iterable[str],
    public_pem: bytes,
    alg: str,
    now: float,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
) -> dict[bytes, bytes]:
    """The tokens that verify as the gateway suite's Bastion rows would accept them, each mapped
    to its ``client_id``: the dict the floor looks tokens up in.

    Checked once here, never per request: header ``alg`` and ``typ: at+jwt``, the signature by the
    key in ``public_pem``, ``iss``, ``aud`` and an ``exp`` after ``now``.
    """
    key = serialization.load_pem_public_key(public_pem)
    found: dict[bytes, bytes] = {}
    for token in tokens:
        try:
            jws = jose.parse_compact(token)
        except jose.JOSEError:
            continue
        header = jws.header
        if header.get("alg") != alg or header.get("typ") != "at+jwt":
            continue
        if not jose.verify(alg, key, jws.signing_input, jws.signature):  # type: ignore[arg-type]
            continue
        claims = orjson.loads(jws.payload)
        if not isinstance(claims, dict) or claims.get("iss") != issuer or claims.get("aud") != audience:
            continue
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= now:
            continue
        found[token.encode("ascii")] = str(claims.get("client_id", "")).encode()
    return found


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream; relays one response at a time to a client."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.client: Client | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done = False
        self.keep_alive = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None and client.transport is not None:
            client.transport.write(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            return
        if self.done:
            self.done = False
            self.client = None
            if self.keep_alive:
                self.pool.idle.append(self)
            else:
                self.transport.close()
            if client is not None:
                client.response_done()

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()  # reset once the callback returns

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        client, self.client = self.client, None
        if client is not None:
            client.upstream_failed()


class Pool:
    """Idle upstream connections, and new ones opened when none is idle."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.idle: list[Upstream] = []

    def send(self, client: Client, data: bytes) -> None:
        """Write ``data`` (a whole request) on a pooled connection whose response goes to ``client``."""
        if self.idle:
            upstream = self.idle.pop()
            upstream.client = client
            upstream.transport.write(data)
            return
        connecting = asyncio.ensure_future(
            self.loop.create_connection(lambda: Upstream(self), self.host, self.port)
        )
        connecting.add_done_callback(lambda future: self._connected(future, client, data))

    def _connected(self, future: asyncio.Future[tuple[Any, Upstream]], client: Client, data: bytes) -> None:
        if future.cancelled() or future.exception() is not None:
            client.upstream_failed()
            return
        _, upstream = future.result()
        upstream.client = client
        upstream.transport.write(data)


class Client(asyncio.Protocol):
    """One client connection: parse, look the token up, forward or refuse, one request at a time."""

    def __init__(self, pool: Pool, tokens: dict[bytes, bytes]) -> None:
        self.pool = pool
        self.tokens = tokens
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.head: list[bytes] = []
        self.token: bytes | None = None
        self.body: list[bytes] = []
        #: Whole requests waiting for the one in flight (``None``: refused, answer 401).
        self.queue: collections.deque[bytes | None] = collections.deque()
        self.busy = False
        self.close_after = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BAD_REQUEST)
        except httptools.HttpParserError:
            self._fail(BAD_REQUEST)

    def on_message_begin(self) -> None:
        self.url = b""
        self.head = []
        self.token = None
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"authorization" and value[:7].lower() == b"bearer ":
            self.token = value[7:].strip()
        if lower not in NOT_FORWARDED:
            self.head.append(name + b": " + value + b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        if not parser.should_keep_alive():
            self.close_after = True
        if self.token is None or self.token not in self.tokens:
            self.queue.append(None)
        else:
            if self.body:
                self.head.append(b"content-length: %d\r\n" % sum(map(len, self.body)))
            request = b"".join(
                [parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n", *self.head, b"\r\n", *self.body]
            )
            self.queue.append(request)
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while self.queue:
            request = self.queue.popleft()
            if request is None:
                self.transport.write(UNAUTHORIZED)
                continue
            self.busy = True
            self.pool.send(self, request)
            return
        if self.close_after and self.transport is not None:
            self.transport.close()

    def response_done(self) -> None:
        self.busy = False
        if self.transport is not None:
            self._next()

    def upstream_failed(self) -> None:
        self.busy = False
        self._fail(BAD_GATEWAY)

    def _fail(self, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.queue.clear()


async def serve(host: str, port: int, upstream_port: int, tokens: dict[bytes, bytes]) -> asyncio.Server:
    """Start the floor forwarder on ``host:port`` in front of ``127.0.0.1:upstream_port``."""
    loop = asyncio.get_running_loop()
    pool = Pool(loop, "127.0.0.1", upstream_port)
    return await loop.create_server(lambda: Client(pool, tokens), host, port, backlog=1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--tokens", type=Path, required=True, help="one token a line")
    parser.add_argument("--public-pem", type=Path, required=True, help="the tokens' public key (PEM)")
    parser.add_argument("--alg", default="RS256")
    args = parser.parse_args(argv)
    tokens = verified_tokens(
        (line for line in args.tokens.read_text().splitlines() if line),
        args.public_pem.read_bytes(),
        args.alg,
        time.time(),
    )
    if not tokens:
        parser.error(f"no token in {args.tokens} verifies with {args.public_pem}")
    import uvloop

    async def run() -> None:
        server = await serve("127.0.0.1", args.port, args.upstream_port, tokens)
        print(f"floor forwarder on 127.0.0.1:{args.port} with {len(tokens)} verified tokens", flush=True)
        await server.serve_forever()

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
